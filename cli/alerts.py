"""``systerns alerts``: follow the alerts topic and print readable notifications."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import signal
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException

from systerns.core.errors import SchemaError
from systerns.core.redact import clean_text
from systerns.core.settings import Settings
from systerns.schemas.codec import Codec


#: Terminal controls: C0, DEL, C1, zero-width and bidi overrides. Anyone who can
#: write to the alerts topic controls these fields; printed raw they would move
#: the cursor, retitle the window or reorder what the operator reads.
_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f"
                       "\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every terminal control character shown as ``?``."""
    return _CONTROLS.sub("?", text)


def _ts(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def render(a: dict) -> str:
    """A multi-line notification for a terminal (``format_alert`` makes it safe)."""
    ev = a["evidence"]
    top = ", ".join(f"{s['name']}×{s['count']}" for s in ev["top_syscalls"][:6])
    paths = ", ".join(f"{k}:{v}" for k, v in sorted(ev["path_classes"].items(),
                                                    key=lambda kv: -kv[1])[:6])
    tree = " ← ".join(f"{n['name'] or '?'}({n['pid']})" for n in a["process_tree"])
    return "\n".join([
        f"[{a['severity'].upper()}] {a['mitre_technique']} {a['mitre_technique_name']}:"
        f" {clean_text(a['summary'], 200)}",
        f"  alert      {a['alert_id']}  ({a['reason']}, trigger {a['trigger']})",
        f"  where      host {a['host']}  container {a['container_id']}"
        + (f" ({a['container_image']})" if a["container_image"] else ""),
        f"  process    {tree}  exe {a['exe_path']}",
        f"  cmdline    {a['cmdline']}",
        f"  behaves    like {a['behaves_like']} ({a['behaves_like_confidence']:.1%}),"
        f" malicious p={a['malicious_probability']:.3f}",
        f"  seen       {_ts(a['first_seen_ns'])} → {_ts(a['last_seen_ns'])} UTC,"
        f" {ev['n_events']} syscalls, {ev['n_threads']} threads, {ev['duration_s']:.1f}s",
        f"  syscalls   {top}",
        f"  paths      {paths}",
        f"  model      {a['model_name']} v{a['model_version']}",
    ])


def format_alert(a: dict, fmt: str) -> str:
    """One alert in an output format: text, alert JSON, OCSF or ECS."""
    if fmt == "text":
        return printable(render(a)) + "\n"
    if fmt == "ocsf":
        from systerns.core.formats import to_ocsf

        a = to_ocsf(a)
    elif fmt == "ecs":
        from systerns.core.formats import to_ecs

        a = to_ecs(a)
    return json.dumps(a, sort_keys=True, default=str)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="systerns alerts", description=__doc__)
    p.add_argument("--bootstrap-servers")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object per alert")
    p.add_argument("--format", choices=("text", "alert", "ocsf", "ecs"), default="text",
                   help="text for people; alert (Avro record), ocsf (Detection "
                        "Finding 2004) or ecs as one JSON object per line")
    p.add_argument("--max", type=int, default=0, help="stop after this many alerts")
    p.add_argument("--idle-timeout-s", type=float, default=0,
                   help="stop after this long without an alert (0: follow forever)")
    args = p.parse_args(argv)
    if args.json and args.format not in ("text", "alert"):
        p.error("--json prints alert records; use --format ocsf|ecs alone")
    settings = Settings.from_env(bootstrap_servers=args.bootstrap_servers)
    consumer = Consumer(settings.kafka_config() | {
        "group.id": f"systerns-alerts-cli-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "enable.auto.commit": False,
    })
    try:
        # Fail clearly on a dead broker or a missing topic: an empty stream
        # would read as "no alerts".
        md = consumer.list_topics(settings.alerts_topic, timeout=10)
        topic = md.topics.get(settings.alerts_topic)
        if topic is None or topic.error is not None:
            raise KafkaException(topic.error if topic else "no such topic")
    except KafkaException as exc:
        print(f"alerts: cannot read {settings.alerts_topic} from "
              f"{settings.bootstrap_servers}: {exc}", file=sys.stderr)
        consumer.close()
        return 1
    consumer.subscribe([settings.alerts_topic])
    if settings.schema_registry_url:
        from systerns.schemas.registry import make_codec

        codec = make_codec("alert", settings.schema_registry_url,
                           topic=settings.alerts_topic, auto_register=False)
    else:
        codec = Codec("alert")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    seen, last = 0, time.monotonic()
    try:
        while not stop["now"]:
            msg = consumer.poll(0.5)
            if msg is None:
                if args.idle_timeout_s and time.monotonic() - last > args.idle_timeout_s:
                    break
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"alerts: {msg.error()}", file=sys.stderr)
                continue
            last = time.monotonic()
            try:
                a = codec.decode(msg.value())
            except SchemaError as exc:
                print(f"alerts: unreadable message at {msg.topic()}/{msg.partition()}"
                      f"/{msg.offset()}: {exc}", file=sys.stderr)
                continue
            print(format_alert(a, "alert" if args.json else args.format), flush=True)
            seen += 1
            if args.max and seen >= args.max:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
