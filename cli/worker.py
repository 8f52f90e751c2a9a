"""``systerns worker``: run the Faust worker until SIGTERM."""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import time
from typing import Any

import structlog

from systerns.core.sessions import SessionPolicy
from systerns.core.settings import Settings


def wait_for_broker(settings: Settings, timeout_s: float) -> None:
    """Wait, with backoff, until a broker answers; Faust gives up at once otherwise.

    Raises:
        SourceError: no broker answered within ``timeout_s``.
    """
    from confluent_kafka.admin import AdminClient

    from systerns.core.errors import SourceError

    log = structlog.get_logger(__name__)
    admin = AdminClient(settings.kafka_config() | {"log_level": 0})
    deadline = time.monotonic() + timeout_s
    delay_s = 0.5
    while True:
        try:
            admin.list_topics(timeout=5)
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            if time.monotonic() + delay_s > deadline:
                raise SourceError(
                    f"no Kafka broker at {settings.bootstrap_servers} after "
                    f"{timeout_s:.0f} s: {exc}") from exc
            log.warning("broker_waiting", bootstrap=settings.bootstrap_servers,
                        retry_in_s=delay_s)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 10.0)


def build_worker(app: Any, loglevel: str) -> Any:
    """A Faust ``Worker`` for ``app`` with no progress spinner.

    With a spinner, Faust sets the root logger to DEBUG when it sets up logging
    and formats every aiokafka debug call into a record (3.8% of the event
    loop's time in the profiled benchmark); a worker has no terminal to spin.
    """
    from faust.worker import Worker

    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="systerns worker", description=__doc__)
    p.add_argument("--bootstrap-servers")
    p.add_argument("--model-target", help="host:port of the PredictionService")
    p.add_argument("--worker-id", help="Faust app id = consumer group")
    p.add_argument("--idle-s", type=float, help="judge sessions idle this long")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--loglevel", default="WARNING", help="Faust's own log level")
    p.add_argument("--broker-wait-s", type=float, default=300.0,
                   help="how long to wait for the brokers at start (0: no wait)")
    args = p.parse_args(argv)
    settings = Settings.from_env(
        bootstrap_servers=args.bootstrap_servers, model_target=args.model_target,
        worker_id=args.worker_id, idle_s=args.idle_s, metrics_port=args.metrics_port)

    wait_for_broker(settings, args.broker_wait_s)

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

    build_worker(app, args.loglevel).execute_from_commandline()
    return 0
