"""``systerns scan FILE``: judge a capture or trace offline, without Kafka.

Runs the same core as the worker (sessions, features, verdicts) over a sysdig
capture (``.scap``) or an ``strace -f -ttt`` recording, with the model loaded
in process or reached over gRPC, and prints verdicts and alerts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from systerns.core.detector import Detector, Outcome
from systerns.core.errors import InputError, SourceError
from systerns.core.events import EventBatch
from systerns.core.sessions import SessionPolicy, Sessionizer
from systerns.core.verdicts import VerdictPolicy, default_host

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "systerns"


def read_any(path: Path, host: str, errors: list[InputError]) -> Iterator[EventBatch]:
    """Batches of a capture or trace file; unreadable records go to ``errors``."""
    if path.suffix == ".scap":
        from systerns.producers.sysdig import read_capture

        items = read_capture(path, host)
    else:
        from systerns.producers.trace import parse_trace_file

        items = parse_trace_file(path, host=host)
    for item in items:
        if isinstance(item, InputError):
            errors.append(item)
        else:
            yield item


def scan_file(path: Path, detector: Detector, *, host: str,
              policy: SessionPolicy | None = None) -> tuple[list[Outcome], dict]:
    """Judge every session in a file; return outcomes and counts."""
    errors: list[InputError] = []
    sessionizer = Sessionizer({}, policy or SessionPolicy())
    judgements = []
    events = 0
    for batch in read_any(path, host, errors):
        events += batch.syscall_count()
        judgements.extend(sessionizer.ingest(batch))
    judgements.extend(sessionizer.flush())
    outcomes = detector.judge(judgements) if judgements else []
    counts = {"file": str(path), "events": events, "judgements": len(judgements),
              "sessions": sum(1 for j in judgements if j.final),
              "alerts": sum(len(o.alerts) for o in outcomes), "bad_records": len(errors)}
    return outcomes, counts


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="systerns scan", description=__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                   help="<base>/<name> folder of the exported model (in process)")
    p.add_argument("--model-target", help="host:port of a PredictionService instead")
    p.add_argument("--model-version", type=int)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--json", action="store_true", help="one JSON verdict per line")
    p.add_argument("--host", default=default_host())
    args = p.parse_args(argv)
    if not 0.0 < args.threshold <= 1.0:
        p.error(f"--threshold must be in (0, 1], not {args.threshold}")
    not_files = [str(f) for f in args.files if not f.is_file()]
    if not_files:
        p.error(f"not a readable file: {', '.join(not_files)}")

    if args.model_target:
        from systerns.serving.client import ModelClient

        model = ModelClient(args.model_target, version=args.model_version)
    else:
        from systerns.serving.client import LocalModel

        model = LocalModel(args.model_dir, version=args.model_version)
    detector = Detector(model, policy=VerdictPolicy(malicious_threshold=args.threshold))
    total_alerts, failed = 0, 0
    for path in args.files:
        try:
            outcomes, counts = scan_file(path, detector, host=args.host)
        except SourceError as exc:
            print(f"{path.name}: unreadable: {exc}", file=sys.stderr)
            failed += 1
            continue
        total_alerts += counts["alerts"]
        for o in outcomes:
            v = o.verdict
            if args.json:
                print(json.dumps({"verdict": v, "alerts": o.alerts}, default=str))
            elif v["final"] or o.alerts:
                flag = " ALERT " + ",".join(a["reason"] for a in o.alerts) if o.alerts else ""
                print(f"{path.name}: pid {v['pid']:>7} {v['process_name'][:16]:<16} "
                      f"behaves like {v['behaves_like']:<12} "
                      f"({v['confidence']:.2f}) malicious {v['malicious_probability']:.3f}"
                      f" [{v['trigger']}, {v['n_events']} syscalls]{flag}")
        print(json.dumps({"scan": counts}), file=sys.stderr)
    return 1 if failed else 0
