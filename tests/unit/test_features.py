"""Feature vectors: name-agnostic, deterministic, bounded."""

from __future__ import annotations

import numpy as np

from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.features import FEATURE_DIM, LAYOUT, vectorize, vectorize_many
from systerns.core.sessions import SessionPolicy, Sessionizer


def session_for(comm: str, exe: str, cmdline: str) -> dict:
    sz = Sessionizer({}, SessionPolicy(min_events=1))
    evs = tuple(Syscall(i * 1000, 7, n, 0, p) for i, (n, p) in enumerate(
        [("open", "/etc/ld.so.cache"), ("mmap", ""), ("read", ""), ("write", ""),
         ("stat", "/tmp/x"), ("close", ""), ("exit", "")] * 5))
    sz.ingest(EventBatch(ProcessInfo("h", "c", 7, 1, comm, exe, cmdline), evs))
    return sz.flush()[0].session if sz.store else None


def test_layout_adds_up():
    assert sum(w for _, w in LAYOUT) == FEATURE_DIM


def test_the_name_never_changes_the_vector():
    sz1 = Sessionizer({}, SessionPolicy(min_events=1))
    sz2 = Sessionizer({}, SessionPolicy(min_events=1))
    evs = tuple(Syscall(i * 1000, 7, n, 0, "/usr/lib/x") for i, n in
                enumerate(["open", "read", "mmap", "close"] * 10))
    sz1.ingest(EventBatch(ProcessInfo("h", "c", 7, 1, "sha256sum", "/usr/bin/sha256sum",
                                      "sha256sum f"), evs))
    sz2.ingest(EventBatch(ProcessInfo("h", "c", 7, 1, "kworker", "/tmp/kworker",
                                      "kworker --token=x"), evs))
    a = vectorize(sz1.flush()[0].session)
    b = vectorize(sz2.flush()[0].session)
    assert np.array_equal(a, b)


def test_vectors_are_finite_and_shaped():
    sz = Sessionizer({}, SessionPolicy(min_events=1))
    evs = tuple(Syscall(i, 7, n, -1 if i % 3 else 0, "") for i, n in
                enumerate(["futex", "sched_setaffinity", "weird_new_call"] * 10))
    sz.ingest(EventBatch(ProcessInfo("h", "c", 7, 1, "x", "x", "x"), evs))
    batch = vectorize_many([j.session for j in sz.flush()])
    assert batch.shape == (1, FEATURE_DIM)
    assert np.isfinite(batch).all()
    assert batch.dtype == np.float32
    assert 0 < batch[0, :].max() <= 1.5
