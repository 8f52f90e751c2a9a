"""``systerns replay``: backtest a range of the events topic on model versions.

Reads with its own consumer group and never commits, so the live worker's
offsets do not move. ``--from``/``--to`` take ``offset:N`` (every partition),
epoch milliseconds, or an ISO-8601 time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from systerns.core.settings import Settings
from systerns.core.verdicts import VerdictPolicy


def _model(args, version: int):
    if args.model_target:
        from systerns.serving.client import ModelClient

        return ModelClient(args.model_target, version=version)
    from systerns.serving.client import LocalModel

    return LocalModel(args.model_dir, version=version)


def main(argv: list[str]) -> int:
    from systerns.cli.scan import DEFAULT_MODEL_DIR

    p = argparse.ArgumentParser(prog="systerns replay", description=__doc__)
    p.add_argument("--from", dest="start", help="start bound (inclusive)")
    p.add_argument("--to", dest="end", help="end bound (exclusive)")
    p.add_argument("--model-version", type=int, required=True)
    p.add_argument("--compare-version", type=int, help="a second version to diff against")
    p.add_argument("--compare-recorded", action="store_true",
                   help="diff against the alerts recorded on the alerts topic")
    p.add_argument("--model-target", help="host:port of a PredictionService")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--labels", type=Path,
                   help='JSON {"host/container/pid": true|false} for precision/recall')
    p.add_argument("--report", type=Path, default=Path("var/replay/backtest"))
    p.add_argument("--bootstrap-servers")
    p.add_argument("--events-topic")
    args = p.parse_args(argv)
    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers,
                                 events_topic=args.events_topic)

    from systerns.streams.replay import (
        parse_bound,
        recorded_alerts,
        run_backtest,
        write_report,
    )

    bounds = []
    for flag, text in (("--from", args.start), ("--to", args.end)):
        try:
            bounds.append(parse_bound(text))
        except ValueError:
            p.error(f"{flag} {text!r}: use offset:N, epoch milliseconds or an ISO time")
    start, end = bounds
    if start and end and start[0] == end[0] and start[1] >= end[1]:
        p.error(f"empty range: --from {args.start} is not before --to {args.end}")
    labels = None
    if args.labels:
        try:
            labels = json.loads(args.labels.read_text())
        except (OSError, ValueError) as exc:
            p.error(f"--labels {args.labels}: {exc}")
        if not isinstance(labels, dict) or not all(
                isinstance(v, bool) for v in labels.values()):
            p.error(f'--labels {args.labels}: expected {{"host/container/pid": '
                    "true|false, ...}")

    def progress(done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 100.0
        print(f"replay: {done}/{total} records ({pct:.0f}%)", file=sys.stderr, flush=True)

    models = {f"v{args.model_version}": _model(args, args.model_version)}
    if args.compare_version is not None:
        models[f"v{args.compare_version}"] = _model(args, args.compare_version)
    recorded = None
    if args.compare_recorded:
        s, e = parse_bound(args.start), parse_bound(args.end)
        start_ms = s[1] if s and s[0] == "time_ms" else 0
        end_ms = e[1] if e and e[0] == "time_ms" else 2**62 // 1_000_000
        recorded = recorded_alerts(settings, start_ms, end_ms)
    report = run_backtest(settings, start=args.start, end=args.end, models=models,
                          labels=labels, progress=progress, recorded=recorded,
                          policy=VerdictPolicy(
                              malicious_threshold=settings.malicious_threshold))
    json_path, md_path = write_report(report, args.report)
    print(md_path.read_text())
    print(json.dumps({"replay_report": str(json_path)}))
    return 0
