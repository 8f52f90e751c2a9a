"""Conversions between the core's dataclasses and Avro records."""

from __future__ import annotations

from systerns.core.events import EventBatch, ProcessInfo, Syscall


_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def as_i64(value: int) -> int:
    """Fit an integer into Avro's signed 64-bit long.

    Sources report some results as unsigned 64-bit (``mmap`` addresses,
    ``-1`` printed as 18446744073709551615); those wrap to their signed value.
    Anything larger is hostile and saturates.
    """
    if _I64_MIN <= value <= _I64_MAX:
        return value
    if _I64_MAX < value < (1 << 64):
        return value - (1 << 64)
    return _I64_MAX if value > 0 else _I64_MIN


def batch_to_record(batch: EventBatch) -> dict:
    """An ``EventBatch`` as an ``event_batch`` Avro record."""
    p = batch.process
    return {
        "host": p.host,
        "container_id": p.container_id,
        "container_image": p.container_image,
        "pid": as_i64(p.pid),
        "ppid": as_i64(p.ppid),
        "comm": p.comm,
        "exe": p.exe,
        "cmdline": p.cmdline,
        "source": batch.source,
        "events": [
            {"ts_ns": as_i64(e.ts_ns), "tid": as_i64(e.tid), "name": e.name,
             "res": as_i64(e.res), "arg": e.arg}
            for e in batch.events
        ],
    }


#: Longest value kept of each process field read from a record. A record on
#: the topic is hostile input: a field that grows every session state (and
#: every changelog message) without bound would crash the worker.
FIELD_MAX_CHARS = {"host": 253, "container_id": 128, "container_image": 512,
                   "comm": 64, "exe": 4096, "cmdline": 8192}


def record_to_batch(rec: dict) -> EventBatch:
    """An ``event_batch`` Avro record as an ``EventBatch``.

    Process fields longer than ``FIELD_MAX_CHARS`` are cut there.
    """
    cap = FIELD_MAX_CHARS
    info = ProcessInfo(
        host=rec["host"][: cap["host"]],
        container_id=rec["container_id"][: cap["container_id"]],
        pid=rec["pid"],
        ppid=rec["ppid"],
        comm=rec["comm"][: cap["comm"]],
        exe=rec["exe"][: cap["exe"]],
        cmdline=rec["cmdline"][: cap["cmdline"]],
        container_image=rec.get("container_image", "")[: cap["container_image"]],
    )
    # A list comprehension, then one tuple: faster than a generator into tuple().
    events = tuple(
        [Syscall(e["ts_ns"], e["tid"], e["name"], e["res"], e["arg"])
         for e in rec["events"]]
    )
    return EventBatch(info, events, rec.get("source", "sysdig"))
