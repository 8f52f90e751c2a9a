"""``systerns demo``: the whole pipeline on this machine, on real data.

Starts the local broker (or reuses one), a fresh set of topics, the model
server and the Faust worker; records real commands with the strace collector,
a renamed copy of find (``kworker``), and the real XMRig miner renamed as
``sshd``
(benchmark mode, no network); publishes the real sysdig captures; prints the
alerts as they arrive; stops everything and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import structlog
from confluent_kafka import Consumer

from systerns.cli.alerts import render
from systerns.cli.stack import REPO, LocalStack, miner_argv, miner_binary
from systerns.core.settings import Settings
from systerns.core.verdicts import default_host
from systerns.producers.publisher import Publisher
from systerns.producers.sysdig import ReadStats, read_capture
from systerns.schemas.codec import Codec
from systerns.streams.offsets import watermarks

log = structlog.get_logger(__name__)
SHARED = Path(os.environ.get("SYSTERNS_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "var" / "demo"


def normal_commands(work: Path) -> list[list[str]]:
    """Everyday commands over files the demo writes itself."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    blob = data / "blob.bin"
    blob.write_bytes(os.urandom(3 << 20))
    text = data / "words.txt"
    text.write_text("\n".join(f"line {i} alpha beta {i * 7 % 13}" for i in range(20000)))
    return [
        ["ls", "-la", "/usr/bin"],
        ["sha256sum", str(blob)],
        ["gzip", "-kf", str(text)],
        ["tar", "-cf", str(data / "a.tar"), "-C", str(data), "words.txt"],
        ["grep", "-c", "alpha", str(text)],
        ["sort", "-o", str(data / "sorted.txt"), str(text)],
        ["find", "/usr/share/doc", "-name", "copyright", "-newer", str(text)],
        ["ps", "aux"],
        ["wc", "-l", str(text)],
        ["cat", str(text)],
    ]


def follow_alerts(bootstrap: str, topic: str, stop: threading.Event,
                  seen: list[dict]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "log_level": 0,
                         "group.id": f"systerns-demo-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    codec = Codec("alert")
    try:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            alert = codec.decode(msg.value())
            seen.append(alert)
            print(render(alert) + "\n", flush=True)
    finally:
        consumer.close()


def count_topic(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count",
                         "log_level": 0})
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    total = 0
    for p in md.partitions:
        lo, hi = watermarks(consumer, topic, p)
        total += hi - lo
    consumer.close()
    return total


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="systerns demo", description=__doc__)
    p.add_argument("--scap", type=Path, action="append",
                   help="capture(s) to publish (default: every real capture in "
                        "../shared/data/scap)")
    p.add_argument("--no-miner", action="store_true", help="skip the renamed miner")
    p.add_argument("--miner-seconds", type=float, default=20.0)
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    p.add_argument("--keep-topics", action="store_true")
    args = p.parse_args(argv)

    t0 = time.monotonic()
    stack = LocalStack(bootstrap=args.bootstrap_servers)
    alerts: list[dict] = []
    stop = threading.Event()
    summary: dict = {}
    try:
        stack.start()
        follower = threading.Thread(target=follow_alerts, daemon=True, args=(
            stack.bootstrap, stack.topics["alerts"], stop, alerts))
        follower.start()
        settings = Settings.from_env(stack.env(), host=default_host())
        publisher = Publisher(settings)
        from systerns.producers.trace import TraceStats, trace_command

        WORK.mkdir(parents=True, exist_ok=True)
        traces = WORK / "traces"
        runs: list[tuple[str, list[str], dict]] = [
            (cmd[0], cmd, {}) for cmd in normal_commands(WORK)]
        # A renamed copy: find that calls itself a kernel thread.
        bin_dir = WORK / "bin"
        bin_dir.mkdir(exist_ok=True)
        kworker = bin_dir / "kworker"
        shutil.copy2(shutil.which("find") or "/usr/bin/find", kworker)
        runs.append(("kworker (renamed find)",
                     [str(kworker), "/usr/share/doc", "-name", "*.gz"], {}))
        if not args.no_miner:
            sshd = bin_dir / "sshd"
            shutil.copy2(miner_binary(), sshd)
            runs.append(("sshd (renamed XMRig, benchmark, no network)",
                         miner_argv(sshd),
                         {"netns": True, "timeout_s": args.miner_seconds}))
        from systerns.lab.miner import hugepages_restored

        for label, argv_, opts in runs:
            st = TraceStats()
            with hugepages_restored():
                publisher.publish(trace_command(
                    argv_, host=settings.host, out_dir=traces, stats=st,
                    on_error=lambda e: publisher.dead_letter(e, stage="collector",
                                                             source="strace"), **opts),
                    source=label)
            log.info("demo_recorded", command=label, exit_code=st.exit_code)
        scaps = args.scap or sorted((SHARED / "scap").glob("*/*.scap"))
        if not scaps:
            # The summary would show 0 sysdig lines with no reason given.
            log.warning("demo_no_captures", looked_in=str(SHARED / "scap"),
                        hint="set SYSTERNS_SHARED_DATA or pass --scap")
        read = ReadStats()
        for scap in scaps:
            try:
                publisher.publish(read_capture(scap, settings.host, read),
                                  source=str(scap))
            except Exception as exc:  # noqa: BLE001 - a bad capture is reported, not fatal
                from systerns.core.errors import InputError

                publisher.dead_letter(InputError("unreadable_capture", str(exc)[:500],
                                                 str(scap)),
                                      stage="collector", source=str(scap))
        pub = publisher.close()
        log.info("demo_collected", events=pub.events_delivered,
                 dead_letters=pub.dead_letters)
        # Wait for the worker: sessions close on exit or after the idle gap.
        last, last_n = time.monotonic(), -1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            n = count_topic(stack.bootstrap, stack.topics["verdicts"])
            if n != last_n:
                last, last_n = time.monotonic(), n
            elif time.monotonic() - last > stack.idle_s + 8:
                break
            time.sleep(1.0)
        time.sleep(1.0)
        summary = {
            "events_published": pub.events_delivered,
            "batches_published": pub.batches_delivered,
            "dead_letters": count_topic(stack.bootstrap, stack.topics["deadletter"]),
            "verdicts": count_topic(stack.bootstrap, stack.topics["verdicts"]),
            "alerts": count_topic(stack.bootstrap, stack.topics["alerts"]),
            "sysdig_lines": read.lines, "sysdig_syscalls": read.syscalls,
        }
        summary["sessions"] = _count_final(stack)
    finally:
        stop.set()
        stack.stop(delete_topics=not args.keep_topics)
    from systerns.serving.export import list_versions

    # The server answers with its newest version; the alerts say which one.
    summary["model_newest_version"] = max(
        list_versions(stack.model_base, stack.model_name), default=0)
    summary["model_versions_in_alerts"] = sorted({a["model_version"] for a in alerts})
    summary["alerts_by_reason"] = {}
    for a in alerts:
        key = f"{a['reason']}:{a['process_name']}"
        summary["alerts_by_reason"][key] = summary["alerts_by_reason"].get(key, 0) + 1
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    print("=" * 72)
    print("systerns demo summary")
    for k, v in summary.items():
        print(f"  {k:<20} {v}")
    print(json.dumps({"demo": summary}, sort_keys=True))
    return 0


def _count_final(stack: LocalStack) -> int:
    """Sessions closed (final verdicts) in this run's verdicts topic."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "log_level": 0,
                         "group.id": f"systerns-demo-count-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([stack.topics["verdicts"]])
    codec = Codec("verdict")
    total, finals, quiet = count_topic(stack.bootstrap, stack.topics["verdicts"]), 0, 0
    seen = 0
    while seen < total and quiet < 20:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            quiet += 1
            continue
        seen += 1
        finals += bool(codec.decode(msg.value())["final"])
    consumer.close()
    return finals
