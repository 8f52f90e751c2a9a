"""Proposed changes not made yet, measured by the benchmarks against the product.

P6: ``event_batch`` as parallel arrays (one per event field) instead of an array
of records; the worker benchmark re-encodes its records in this layout and
times decoding them into batches against the v1 schema. Making it real needs a
``schemas/avro/event_batch/v2.avsc`` and a decoder for both versions during the
roll-out (``schemas/codec.py`` already reads by version).

The changes measured here before (P1-P5, P7, P8) are in the product now;
``benchmarks.baseline`` holds the code they replaced, for before/after figures.
"""

from __future__ import annotations

from systerns.core.events import EventBatch, ProcessInfo, Syscall

#: ``schemas/avro/event_batch/v2.avsc`` as proposed: the events as parallel
#: arrays (one per field) instead of an array of records. fastavro then builds
#: five lists per batch instead of one dict per event.
COLUMNAR_EVENT_BATCH = {
    "type": "record", "name": "EventBatch", "namespace": "io.systerns.events",
    "fields": [
        {"name": "host", "type": "string"},
        {"name": "container_id", "type": "string"},
        {"name": "container_image", "type": "string", "default": ""},
        {"name": "pid", "type": "long"},
        {"name": "ppid", "type": "long"},
        {"name": "comm", "type": "string"},
        {"name": "exe", "type": "string"},
        {"name": "cmdline", "type": "string"},
        {"name": "source", "type": "string"},
        {"name": "ts_ns", "type": {"type": "array", "items": "long"}},
        {"name": "tid", "type": {"type": "array", "items": "long"}},
        {"name": "name", "type": {"type": "array", "items": "string"}},
        {"name": "res", "type": {"type": "array", "items": "long"}},
        {"name": "arg", "type": {"type": "array", "items": "string"}},
    ],
}
_EVENT_FIELDS = ("ts_ns", "tid", "name", "res", "arg")


def to_columnar(rec: dict) -> dict:
    """A v1 ``event_batch`` record in the proposed columnar layout."""
    out = {k: v for k, v in rec.items() if k != "events"}
    for f in _EVENT_FIELDS:
        out[f] = [e[f] for e in rec["events"]]
    return out


def columnar_record_to_batch(rec: dict) -> EventBatch:
    """``record_to_batch`` for the columnar layout."""
    info = ProcessInfo(
        host=rec["host"], container_id=rec["container_id"], pid=rec["pid"],
        ppid=rec["ppid"], comm=rec["comm"], exe=rec["exe"], cmdline=rec["cmdline"],
        container_image=rec.get("container_image", ""),
    )
    events = tuple(map(Syscall, rec["ts_ns"], rec["tid"], rec["name"],
                       rec["res"], rec["arg"]))
    return EventBatch(info, events, rec.get("source", "sysdig"))
