"""A monitored process cannot grow its session state without bound.

Session states are written to the worker's changelog on every record; one that
outgrows the broker's message limit crashes the worker, so any process could
switch detection off by calling made-up syscall numbers or carrying a huge
command line.
"""

from __future__ import annotations

import shutil
import sys

import orjson
import pytest

from systerns.core.events import EventBatch
from systerns.core.sessions import MAX_DISTINCT_SYSCALLS, Sessionizer
from systerns.schemas.records import FIELD_MAX_CHARS, batch_to_record, record_to_batch

#: Far below the broker's 1 MB default message limit.
STATE_MAX_BYTES = 200_000

FLOOD = ("import ctypes\n"
         "libc = ctypes.CDLL(None)\n"
         "for n in range(1000, 4000):\n"
         "    libc.syscall(n)\n")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_a_process_calling_thousands_of_unknown_syscalls_stays_bounded(tmp_path):
    from systerns.producers.trace import trace_command

    batches = [b for b in trace_command([sys.executable, "-c", FLOOD], host="h",
                                        out_dir=tmp_path)
               if isinstance(b, EventBatch)]
    names = {e.name for b in batches for e in b.events}
    assert len(names) > 2 * MAX_DISTINCT_SYSCALLS, "the flood did not reach strace"

    store: dict[str, dict] = {}
    sessionizer = Sessionizer(store)
    judged = []
    for b in batches:
        judged += sessionizer.ingest(b)
        for state in store.values():
            assert len(state["counts"]) <= MAX_DISTINCT_SYSCALLS
            assert len(orjson.dumps(state)) < STATE_MAX_BYTES
    flood = max((j.session for j in judged), key=lambda s: s["n_events"])
    assert sum(flood["counts"].values()) == flood["n_events"]  # nothing dropped
    assert flood["counts"]["other"] > 2000


def test_a_hostile_record_is_cut_to_bounded_fields():
    rec = {"host": "h" * 100_000, "container_id": "c" * 100_000, "pid": 7, "ppid": 1,
           "comm": "x" * 100_000, "exe": "/" + "e" * 300_000,
           "cmdline": "\x01" * 300_000, "container_image": "i" * 100_000,
           "source": "sysdig",
           "events": [{"ts_ns": 10**18 + i, "tid": 7, "name": f"n{i}" + "z" * 1000,
                       "res": 0, "arg": ""} for i in range(600)]}
    batch = record_to_batch(rec)
    for field_name, limit in FIELD_MAX_CHARS.items():
        assert len(getattr(batch.process, field_name)) <= limit

    store: dict[str, dict] = {}
    Sessionizer(store).ingest(batch)
    (state,) = store.values()
    assert state["counts"] == {"other": 600}
    assert len(orjson.dumps(state)) < STATE_MAX_BYTES
    assert record_to_batch(batch_to_record(batch)).process == batch.process
