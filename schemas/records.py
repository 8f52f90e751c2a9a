"""Conversions between the core's dataclasses and Avro records."""

from __future__ import annotations

from itertools import repeat

from systerns.core.events import EventBatch, ProcessInfo, Syscall


_tuple_new = tuple.__new__
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


def _process_fields(batch: EventBatch) -> dict:
    """The process and source fields every ``event_batch`` version shares."""
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
    }


def batch_to_record(batch: EventBatch) -> dict:
    """An ``EventBatch`` as an ``event_batch`` Avro record (v2, columnar).

    The events go into five parallel arrays and ``events`` stays empty: the
    decoder then builds five lists instead of one dict per event.
    """
    events = batch.events
    return _process_fields(batch) | {
        "events": [],
        "ts_ns": [as_i64(e.ts_ns) for e in events],
        "tid": [as_i64(e.tid) for e in events],
        "name": [e.name for e in events],
        "res": [as_i64(e.res) for e in events],
        "arg": [e.arg for e in events],
    }


def batch_to_record_v1(batch: EventBatch) -> dict:
    """An ``EventBatch`` as a v1 ``event_batch`` record (an array of event records).

    What collectors before v2 write; kept so the reader's v1 path stays tested.
    """
    return _process_fields(batch) | {
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


#: The event fields of the columnar layout (v2), in ``Syscall`` order.
EVENT_COLUMNS = ("ts_ns", "tid", "name", "res", "arg")


def record_to_batch(rec: dict) -> EventBatch:
    """An ``event_batch`` Avro record (v1 or v2) as an ``EventBatch``.

    The events come from ``events`` when it is filled (a v1 writer), else from
    the five parallel arrays (v2). Process fields longer than
    ``FIELD_MAX_CHARS`` are cut there.

    Raises:
        ValueError: the arrays differ in length, or both layouts are filled.
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
    rows = rec["events"]
    ts_ns = rec.get("ts_ns") or ()
    if rows:
        if any(rec.get(c) for c in EVENT_COLUMNS):
            raise ValueError("event_batch carries both event layouts")
        # A list comprehension, then one tuple: faster than a generator into
        # tuple().
        events = tuple(
            [Syscall(e["ts_ns"], e["tid"], e["name"], e["res"], e["arg"])
             for e in rows]
        )
    else:
        tid, name, res, arg = (rec.get(c) or () for c in EVENT_COLUMNS[1:])
        n = len(ts_ns)
        if not len(tid) == len(name) == len(res) == len(arg) == n:
            raise ValueError(
                "event_batch arrays differ in length: "
                f"{n}/{len(tid)}/{len(name)}/{len(res)}/{len(arg)}")
        # Each zipped row becomes a ``Syscall`` through ``tuple.__new__``, the
        # constructor ``Syscall._make`` itself ends in, without its per-call
        # overhead (the lengths are checked above).
        events = tuple(map(_tuple_new, repeat(Syscall, n),
                           zip(ts_ns, tid, name, res, arg)))
    return EventBatch(info, events, rec.get("source", "sysdig"))
