"""Backtesting: re-run a range of the events topic through chosen model versions.

The replay reads with its own consumer group and explicit partition
assignment, never commits, and so never moves the live worker's offsets. It
runs the same core (sessions, features, verdicts) as the worker and writes a
report: alerts per model version, what a second version adds, removes or
changes, and precision and recall where labels are given.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import Consumer, TopicPartition

from systerns.core.detector import Detector, Outcome
from systerns.core.errors import InputError
from systerns.core.sessions import Judgement, SessionPolicy, Sessionizer
from systerns.core.settings import Settings
from systerns.core.verdicts import VerdictPolicy
from systerns.schemas.codec import Codec
from systerns.schemas.records import record_to_batch
from systerns.streams.offsets import watermarks

log = structlog.get_logger(__name__)


def parse_bound(text: str | None) -> tuple[str, int] | None:
    """A range bound: ``offset:N``, a bare integer offset, epoch ms, or ISO time.

    Returns:
        ``("offset", n)`` or ``("time_ms", ms)``; None for an open bound.
    """
    if text is None or text == "":
        return None
    if text.startswith("offset:"):
        return ("offset", int(text[7:]))
    if text.isdigit():
        n = int(text)
        # Epoch milliseconds are 13 digits for any date after 2001.
        return ("time_ms", n) if n >= 10**12 else ("offset", n)
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return ("time_ms", int(when.timestamp() * 1000))


@dataclass(slots=True)
class ReplayRange:
    """Start and end offsets per partition (end exclusive)."""

    start: dict[int, int]
    end: dict[int, int]

    @property
    def total(self) -> int:
        return sum(max(self.end[p] - self.start[p], 0) for p in self.start)


def resolve_range(consumer: Consumer, topic: str, start: tuple[str, int] | None,
                  end: tuple[str, int] | None) -> ReplayRange:
    """Turn bounds into offsets on every partition of the topic."""
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    parts = sorted(md.partitions)
    lows, highs = {}, {}
    for p in parts:
        lows[p], highs[p] = watermarks(consumer, topic, p)

    def at(bound: tuple[str, int] | None, default: dict[int, int]) -> dict[int, int]:
        if bound is None:
            return dict(default)
        kind, value = bound
        if kind == "offset":
            return {p: min(max(value, lows[p]), highs[p]) for p in parts}
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, value) for p in parts], timeout=10)
        return {tp.partition: (tp.offset if tp.offset >= 0 else highs[tp.partition])
                for tp in found}

    return ReplayRange(at(start, lows), at(end, highs))


def read_range(settings: Settings, rng: ReplayRange, topic: str,
               progress: Callable[[int, int], None] | None = None
               ) -> Iterator[tuple[int, bytes]]:
    """Values of the range, as (partition, value), with a private, non-committing group."""
    consumer = Consumer(settings.kafka_config() | {
        "group.id": f"systerns-replay-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest", "log_level": 0})
    todo = {p for p in rng.start if rng.end[p] > rng.start[p]}
    consumer.assign([TopicPartition(topic, p, rng.start[p]) for p in todo])
    done, total, idle = 0, rng.total, 0
    try:
        while todo and idle < 60:
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 1
                continue
            idle = 0
            if msg.error():
                log.warning("replay_consume_error", error=str(msg.error()))
                continue
            p = msg.partition()
            if p not in todo or msg.offset() >= rng.end[p]:
                continue
            done += 1
            yield p, msg.value()
            if msg.offset() + 1 >= rng.end[p]:
                todo.discard(p)
            if progress and done % 500 == 0:
                progress(done, total)
    finally:
        consumer.close()
    if progress:
        progress(done, total)


@dataclass(slots=True)
class Backtest:
    """What one replay found."""

    records: int = 0
    events: int = 0
    bad_records: int = 0
    judgements: list[Judgement] = field(default_factory=list)
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    seconds: float = 0.0


def sessionize(values: Iterator[tuple[int, bytes]],
               policy: SessionPolicy | None = None) -> Backtest:
    """Run the core's sessionizer over replayed records."""
    bt = Backtest()
    codec = Codec("event_batch")
    sz = Sessionizer({}, policy or SessionPolicy())
    for partition, value in values:
        bt.records += 1
        try:
            batch = record_to_batch(codec.decode(value))
        except InputError:
            bt.bad_records += 1
            continue
        bt.events += batch.syscall_count()
        bt.judgements.extend(sz.ingest(batch, partition=partition))
    bt.judgements.extend(sz.flush())
    return bt


def alert_keys(outcomes: list[Outcome]) -> dict[tuple[str, str], dict]:
    """Alerts by (session, reason), the unit compared across model versions."""
    out = {}
    for o in outcomes:
        for a in o.alerts:
            out[(a["session_id"], a["reason"])] = a
    return out


def diff_alerts(base: dict, other: dict) -> dict:
    """Alerts added, removed and changed going from ``base`` to ``other``."""
    added = sorted(set(other) - set(base))
    removed = sorted(set(base) - set(other))
    changed = sorted(
        k for k in set(base) & set(other)
        if base[k]["behaves_like"] != other[k]["behaves_like"]
        or abs(base[k]["malicious_probability"] - other[k]["malicious_probability"]) > 0.05)
    return {"added": [list(k) for k in added], "removed": [list(k) for k in removed],
            "changed": [list(k) for k in changed]}


def score_labels(outcomes: list[Outcome], labels: dict[str, bool]) -> dict | None:
    """Precision and recall of final verdicts against process labels.

    Args:
        labels: ``host/container/pid`` → malicious, for the labelled processes.
    """
    if not labels:
        return None
    predicted: dict[str, bool] = {}
    for o in outcomes:
        v = o.verdict
        key = f"{v['host']}/{v['container_id']}/{v['pid']}"
        if key in labels:
            predicted[key] = predicted.get(key, False) or any(
                a["reason"] == "crypto_mining" for a in o.alerts)
    tp = sum(1 for k, p in predicted.items() if p and labels[k])
    fp = sum(1 for k, p in predicted.items() if p and not labels[k])
    fn = sum(1 for k, p in predicted.items() if not p and labels[k])
    return {"labelled_processes": len(predicted), "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None}


def run_backtest(settings: Settings, *, start: str | None, end: str | None,
                 models: dict[str, object], labels: dict[str, bool] | None = None,
                 policy: VerdictPolicy | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 recorded: dict | None = None) -> dict:
    """Replay a range through each model and build the report dictionary.

    Args:
        models: name (e.g. ``v1``) → a model client; the first is the baseline.
        recorded: alerts recorded at the time (``recorded_alerts``), to diff the
            baseline against.
    """
    t0 = time.monotonic()
    probe = Consumer(settings.kafka_config() | {
        "group.id": f"systerns-replay-probe-{uuid.uuid4().hex[:8]}", "log_level": 0})
    rng = resolve_range(probe, settings.events_topic, parse_bound(start), parse_bound(end))
    probe.close()
    log.info("replay_start", topic=settings.events_topic, records=rng.total,
             start=rng.start, end=rng.end)
    bt = sessionize(read_range(settings, rng, settings.events_topic, progress))
    report: dict = {
        "topic": settings.events_topic,
        "range": {"start": rng.start, "end": rng.end, "records": rng.total},
        "records_read": bt.records, "events": bt.events, "bad_records": bt.bad_records,
        "judgements": len(bt.judgements),
        "sessions": sum(1 for j in bt.judgements if j.final),
        "models": {},
    }
    keyed = {}
    for name, model in models.items():
        detector = Detector(model, settings.model_name, policy)
        outcomes = []
        for i in range(0, len(bt.judgements), 256):
            outcomes.extend(detector.judge(bt.judgements[i:i + 256]))
        keyed[name] = alert_keys(outcomes)
        by_reason: dict[str, int] = {}
        for a in keyed[name].values():
            by_reason[a["reason"]] = by_reason.get(a["reason"], 0) + 1
        report["models"][name] = {
            "model_version": outcomes[0].verdict["model_version"] if outcomes else None,
            "alerts": len(keyed[name]), "alerts_by_reason": by_reason,
            "alerted_processes": sorted({f"{a['host']}/{a['container_id']}/{a['pid']} "
                                         f"{a['process_name']} {a['reason']}"
                                         for a in keyed[name].values()}),
            "labels": score_labels(outcomes, labels or {}),
        }
    names = list(models)
    report["diff"] = {f"{names[0]}->{n}": diff_alerts(keyed[names[0]], keyed[n])
                      for n in names[1:]}
    if recorded is not None:
        report["recorded_alerts"] = len(recorded)
        report["diff"][f"recorded->{names[0]}"] = diff_alerts(recorded, keyed[names[0]])
    report["seconds"] = round(time.monotonic() - t0, 2)
    report["events_per_s"] = round(bt.events / max(report["seconds"], 1e-3))
    return report


def recorded_alerts(settings: Settings, start_ms: int, end_ms: int) -> dict:
    """Alerts recorded on the alerts topic whose sessions fall in a time range."""
    codec = Codec("alert")
    consumer = Consumer(settings.kafka_config() | {
        "group.id": f"systerns-replay-alerts-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 0})
    rng = resolve_range(consumer, settings.alerts_topic, None, None)
    out = {}
    for _, value in read_range(settings, rng, settings.alerts_topic):
        try:
            a = codec.decode(value)
        except InputError:
            continue
        if start_ms * 1_000_000 <= a["last_seen_ns"] and a["first_seen_ns"] <= end_ms * 1_000_000:
            out[(a["session_id"], a["reason"])] = a
    consumer.close()
    return out


def write_report(report: dict, path: Path) -> tuple[Path, Path]:
    """Write the report as JSON and Markdown next to each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    lines = [f"# Systerns backtest of `{report['topic']}`", "",
             f"- records {report['records_read']} (range {report['range']['records']}),"
             f" events {report['events']}, bad records {report['bad_records']}",
             f"- sessions judged {report['sessions']}, judgements {report['judgements']}",
             f"- {report['seconds']} s, {report['events_per_s']} events/s", "",
             "| model | version | alerts | by reason | precision | recall |",
             "|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        lab = m["labels"] or {}
        lines.append(f"| {name} | {m['model_version']} | {m['alerts']} | "
                     f"{m['alerts_by_reason']} | {lab.get('precision')} | "
                     f"{lab.get('recall')} |")
    for pair, d in report.get("diff", {}).items():
        lines += ["", f"## {pair}", f"- added: {len(d['added'])}",
                  f"- removed: {len(d['removed'])}", f"- changed: {len(d['changed'])}"]
        for kind in ("added", "removed", "changed"):
            lines += [f"  - {kind}: `{s}` {r}" for s, r in d[kind][:20]]
    md_path = path.with_suffix(".md")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
