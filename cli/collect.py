"""``systerns collect``: read syscalls and publish them to the events topic."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.core.redact import clean_cmdline
from systerns.core.settings import Settings
from systerns.core.verdicts import default_host
from systerns.producers.publisher import Publisher
from systerns.producers.sysdig import ReadStats, check_live_driver, read_capture

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="systerns collect", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scap", type=Path, action="append",
                     help="a sysdig capture file (repeatable)")
    src.add_argument("--live", action="store_true",
                     help="capture live with sysdig (needs its kernel driver)")
    src.add_argument("--trace", action="store_true",
                     help="record the command after -- with strace")
    p.add_argument("--host", help="node name on the events (default: this host)")
    p.add_argument("--container-id", default="host",
                   help="container id for --trace events")
    p.add_argument("--bootstrap-servers", help="Kafka brokers")
    p.add_argument("--trace-dir", type=Path, default=Path("var/traces"),
                   help="where --trace keeps the strace output")
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when any record was dead-lettered")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- CMD ARGS for --trace")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env(host=args.host, bootstrap_servers=args.bootstrap_servers)
    host = settings.host or default_host()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="0.0.0.0")  # noqa: S104 - scraped by Prometheus
    log.info("collector_started", **settings.masked())
    publisher = Publisher(settings)
    publisher.install_signal_handlers()
    if settings.outage_policy == "spill":
        # Records spooled by an earlier run during an outage go first.
        publisher.replay_spool()
    read = ReadStats()
    rc = 0
    try:
        if args.scap:
            for scap in args.scap:
                try:
                    publisher.publish(read_capture(scap, host, read), source=str(scap))
                except SourceError as exc:
                    # A truncated capture: what was read is published, the failure
                    # is dead-lettered with its reason and the next file goes on.
                    log.error("capture_failed", path=str(scap), error=str(exc))
                    from systerns.core.errors import InputError

                    publisher.dead_letter(InputError("unreadable_capture", str(exc),
                                                     str(scap)),
                                          stage="collector", source=str(scap))
                    rc = 1
        elif args.live:
            check_live_driver()
            from systerns.producers.sysdig import read_live

            publisher.publish(read_live(host, read, publisher.stopping), source="live")
        else:
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not cmd:
                print("systerns collect --trace needs a command after --", file=sys.stderr)
                return 2
            from systerns.producers.trace import trace_command

            publisher.publish(
                trace_command(cmd, host=host, out_dir=args.trace_dir,
                              container_id=args.container_id,
                              on_error=lambda e: publisher.dead_letter(
                                  e, stage="collector", source="strace")),
                # The traced command may carry secrets in its argv: the source
                # goes to a log line and to dead letters, so it is redacted.
                source=clean_cmdline(" ".join(cmd), 200))
    finally:
        stats = publisher.close()
    summary = {"read": dataclasses.asdict(read) if args.scap or args.live else None,
               "published": stats.as_dict(), "outage_policy": settings.outage_policy,
               "unaccounted_events": stats.unaccounted()}
    print(json.dumps(summary, sort_keys=True, default=str))
    # Events neither on the topic nor in the spool are lost to detection: that
    # is a runtime failure whatever the outage policy, and it wins over --strict.
    lost = (stats.events_failed + stats.events_dropped + stats.events_in_flight
            + stats.events_unsent)
    if lost:
        log.error("events_not_delivered", events=lost,
                  outage_policy=settings.outage_policy)
    if stats.delivery_errors or lost or rc == 1:
        return 1
    if args.strict and stats.dead_letters:
        return 3
    return rc
