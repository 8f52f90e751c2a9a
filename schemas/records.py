"""Conversions between the core's dataclasses and Avro records."""

from __future__ import annotations

from systerns.core.events import EventBatch, ProcessInfo, Syscall


def batch_to_record(batch: EventBatch) -> dict:
    """An ``EventBatch`` as an ``event_batch`` Avro record."""
    p = batch.process
    return {
        "host": p.host,
        "container_id": p.container_id,
        "container_image": p.container_image,
        "pid": p.pid,
        "ppid": p.ppid,
        "comm": p.comm,
        "exe": p.exe,
        "cmdline": p.cmdline,
        "source": batch.source,
        "events": [
            {"ts_ns": e.ts_ns, "tid": e.tid, "name": e.name, "res": e.res, "arg": e.arg}
            for e in batch.events
        ],
    }


def record_to_batch(rec: dict) -> EventBatch:
    """An ``event_batch`` Avro record as an ``EventBatch``."""
    info = ProcessInfo(
        host=rec["host"],
        container_id=rec["container_id"],
        pid=rec["pid"],
        ppid=rec["ppid"],
        comm=rec["comm"],
        exe=rec["exe"],
        cmdline=rec["cmdline"],
        container_image=rec.get("container_image", ""),
    )
    events = tuple(
        Syscall(e["ts_ns"], e["tid"], e["name"], e["res"], e["arg"])
        for e in rec["events"]
    )
    return EventBatch(info, events, rec.get("source", "sysdig"))
