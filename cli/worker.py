"""``systerns worker``: run the Faust worker until SIGTERM."""

from __future__ import annotations

import argparse
import atexit
import json
import sys

from systerns.core.sessions import SessionPolicy
from systerns.core.settings import Settings


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="systerns worker", description=__doc__)
    p.add_argument("--bootstrap-servers")
    p.add_argument("--model-target", help="host:port of the PredictionService")
    p.add_argument("--worker-id", help="Faust app id = consumer group")
    p.add_argument("--idle-s", type=float, help="judge sessions idle this long")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--loglevel", default="WARNING", help="Faust's own log level")
    args = p.parse_args(argv)
    settings = Settings.from_env(
        bootstrap_servers=args.bootstrap_servers, model_target=args.model_target,
        worker_id=args.worker_id, idle_s=args.idle_s, metrics_port=args.metrics_port)

    from faust.worker import Worker

    from systerns.streams.app import balance, create_app

    app = create_app(settings, session_policy=SessionPolicy(
        idle_s=settings.idle_s, judge_every_s=settings.judge_every_s,
        max_sessions=settings.max_sessions))

    def print_totals() -> None:
        # The balance line: records in = records sessionized + dead-lettered.
        print(json.dumps({"worker": app.systerns_totals,
                          "balance": balance(app.systerns_totals)}, sort_keys=True),
              file=sys.stderr, flush=True)

    atexit.register(print_totals)

    worker = Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
