"""Feature vectors: name-agnostic, deterministic, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.features import (
    FEATURE_DIM,
    FEATURE_DIMS,
    FEATURE_VERSION,
    LAYOUT,
    LAYOUTS,
    fit_version,
    vectorize,
    vectorize_many,
)
from systerns.core.sessions import (
    SHAPE_BUCKETS,
    SessionPolicy,
    Sessionizer,
    gap_bucket,
    size_bucket,
)


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


def _shaped_session() -> dict:
    """A two-thread process: reads 32 KiB blocks, computes, waits on a futex."""
    sz = Sessionizer({}, SessionPolicy(min_events=1))
    evs, ts = [], 10**18
    for i in range(40):
        ts += 50_000
        evs.append(Syscall(ts, 7, "read", 32_768 if i < 39 else 0, ""))
        ts += 2_000_000  # 2 ms of work after each read
        evs.append(Syscall(ts, 7, "write", 64, ""))
        evs.append(Syscall(ts + 10_000, 8, "futex", 0, ""))
    evs.append(Syscall(ts + 10**6, 7, "exit", 0, ""))
    (closed,) = sz.ingest(EventBatch(ProcessInfo("h", "c", 7, 1, "x", "x", "x"),
                                     tuple(evs)))
    assert closed.trigger == "exit"
    return closed.session


def test_each_version_is_a_prefix_of_the_next():
    s = _shaped_session()
    v1 = vectorize(s, version=1)
    v2 = vectorize(s, version=2)
    v3 = vectorize(s)

    assert FEATURE_VERSION == 3
    assert v1.shape == (FEATURE_DIMS[1],) and v2.shape == (FEATURE_DIMS[2],)
    assert v3.shape == (FEATURE_DIMS[3],)
    assert FEATURE_DIMS[3] > FEATURE_DIMS[2] > FEATURE_DIMS[1]
    assert np.array_equal(v2[: FEATURE_DIMS[1]], v1)
    assert np.array_equal(v3[: FEATURE_DIMS[2]], v2)
    assert np.array_equal(fit_version(v3[None], 1)[0], v1)
    assert np.array_equal(fit_version(v3[None], 2)[0], v2)
    with pytest.raises(ValueError):
        fit_version(v1[None], 2)
    with pytest.raises(ValueError):
        vectorize(s, version=9)


def _block(v: np.ndarray, name: str) -> np.ndarray:
    off = 0
    for block, width in LAYOUTS[2]:
        if block == name:
            return v[off : off + width]
        off += width
    raise KeyError(name)


def test_shape_blocks_see_sizes_and_gaps():
    """Read sizes, write sizes and gaps land in their log buckets as shares."""
    s = _shaped_session()
    v = vectorize(s)
    reads = _block(v, "read_size_share")
    writes = _block(v, "write_size_share")
    gaps = _block(v, "gap_share").reshape(3, SHAPE_BUCKETS)  # b, c, r

    assert reads[size_bucket(32_768)] == pytest.approx(39 / 40)
    assert reads[0] == pytest.approx(1 / 40)
    assert writes[size_bucket(64)] == pytest.approx(1.0)
    # After each read, ~2 ms pass before the write: "r" gaps in 2 ms's bucket.
    assert gaps[2, gap_bucket(2_000_000)] > 0.9 * gaps[2].sum() > 0
    assert gaps.sum() == pytest.approx(1.0)
    assert _block(v, "gap_time_by_class").sum() == pytest.approx(1.0)
    stats = _block(v, "shape_stats")
    assert 0 < stats.min() and stats.max() < 1.0
    assert s["io_bytes"] == {"r": 39 * 32_768, "w": 40 * 64}


def test_cpu_per_byte_orders_slower_tools_higher():
    """Twice the time after each read means a larger ps-per-byte feature."""
    def run(work_ns: int) -> float:
        sz = Sessionizer({}, SessionPolicy(min_events=1))
        evs, ts = [], 10**18
        for _ in range(30):
            evs.append(Syscall(ts, 7, "read", 65_536, ""))
            ts += work_ns
        evs.append(Syscall(ts, 7, "exit", 0, ""))
        (closed,) = sz.ingest(EventBatch(ProcessInfo("h", "c", 7, 1, "x", "x", "x"),
                                         tuple(evs)))
        return float(_block(vectorize(closed.session), "shape_stats")[0])

    assert run(100_000) < run(200_000) < run(400_000)


def test_state_without_shape_keys_still_vectorizes():
    """Session state written before version 2 gives zeros in the new blocks."""
    s = _shaped_session()
    for k in ("t_last", "gaps", "gap_ns", "gap_tw", "io_rd", "io_wr", "io_bytes"):
        del s[k]
    v = vectorize(s)
    assert not v[FEATURE_DIMS[1]:].any()
    assert v[: FEATURE_DIMS[1]].any()
