"""Model latency: Predict over gRPC against the same SavedModel called in process.

``systerns serve`` runs on a free 127.0.0.1 port (started by
``cli.stack.LocalStack``); ``serving.client.ModelClient`` sends batches of 1,
16, 64 and 256 feature rows; ``serving.client.LocalModel`` calls the same
version's signature in this process. Calls alternate between the two, one by
one, so the machine's load reaches both alike. Both sides include turning the
outputs into ``Prediction`` objects.

Rows are real: the feature vectors of sessions from the lab recordings and the
captures, cycled to fill a batch.

    python -m benchmarks.model [--small] [--calls N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    SCRATCH,
    Figure,
    Report,
    capture_batches,
    capture_paths,
    lab_runs,
    percentile,
    pick_model,
    quiet_logs,
    require_own_tree,
    trace_batches,
)

BATCH_ROWS = (1, 16, 64, 256)
GOAL_P99_MS_64 = 20.0


def real_rows(small: bool) -> np.ndarray:
    """Feature vectors of real sessions (lab recordings and captures)."""
    from systerns.core.features import vectorize_many
    from systerns.core.sessions import Sessionizer

    sessions = Sessionizer({})
    judged = []
    runs = lab_runs()
    for run in runs[:: 8 if small else 1]:
        for b in trace_batches(run, f"lab-{run['run_id']}"):
            judged += sessions.ingest(b)
    for i, path in enumerate(capture_paths()[: 2 if small else None]):
        for b in capture_batches(path, f"cap{i}"):
            judged += sessions.ingest(b)
    judged += sessions.flush()
    return vectorize_many([j.session for j in judged])


def measure(report: Report, client, local, rows: np.ndarray, calls: int,
            warmup: int) -> None:
    """p50/p99 of each batch size, gRPC against in process, calls alternating."""
    for n in BATCH_ROWS:
        batches = [np.take(rows, range(k * n, (k + 1) * n), axis=0, mode="wrap")
                   for k in range(min(calls, 64))]
        for k in range(warmup):
            client.predict(batches[k % len(batches)])
            local.predict(batches[k % len(batches)])
        grpc_ms, local_ms = [], []
        for k in range(calls):
            x = batches[k % len(batches)]
            first, second = (client, local) if k % 2 else (local, client)
            for model in (first, second):
                started = time.perf_counter()
                out = model.predict(x)
                took = (time.perf_counter() - started) * 1e3
                (grpc_ms if model is client else local_ms).append(took)
                if len(out) != n:
                    raise SystemExit(f"{len(out)} predictions for {n} rows")
        goal = f"p99 <= {GOAL_P99_MS_64:.0f} ms" if n == 64 else ""
        for q in (50, 99):
            report.add(Figure(
                f"model.grpc.p{q}_ms.batch{n}", percentile(grpc_ms, q), "ms",
                f"LocalModel p{q} (same rows)", percentile(local_ms, q),
                goal if q == 99 else "",
                f"{calls} calls of {n} rows each side, alternating; "
                f"{n * 1e3 / np.mean(grpc_ms):,.0f} rows/s over gRPC"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a few seconds (CI)")
    p.add_argument("--calls", type=int, help="timed calls per batch size and side")
    p.add_argument("--model-wait-s", type=float, default=1800.0,
                   help="how long to wait for an exported model (full runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_own_tree()
    quiet_logs()
    calls = args.calls or (20 if args.small else 2000)
    report = Report("model", args.small)

    model_base, model_label = pick_model(args.small, args.model_wait_s)
    rows = real_rows(args.small)
    report.input.update({"model": model_label, "model_base": str(model_base),
                         "distinct_rows": len(rows), "calls_per_size": calls})

    from systerns.cli.stack import LocalStack
    from systerns.serving.client import LocalModel, ModelClient

    stack = LocalStack(model_base=model_base, log_dir=SCRATCH / "logs")
    try:
        started = time.monotonic()
        stack.start_model_server()
        report.input["server_start_s"] = round(time.monotonic() - started, 1)
        local = LocalModel(Path(model_base) / "systerns")
        with ModelClient(f"127.0.0.1:{stack.model_port}", timeout_s=30.0) as client:
            report.input["model_version"] = local.version
            measure(report, client, local, rows, calls, 5 if args.small else 50)
    finally:
        stack.stop(delete_topics=False)
    require_own_tree()
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
