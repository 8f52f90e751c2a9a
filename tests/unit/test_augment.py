"""Syscall-dialect copies of training rows (``serving.augment``)."""

from __future__ import annotations

import numpy as np

from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.features import FEATURE_DIM, OFFSETS, vectorize
from systerns.core.sessions import SessionPolicy, Sessionizer
from systerns.core.syscalls import VOCAB_INDEX, VOCABULARY
from systerns.serving.augment import add_dialect_rows, rewrite_row

N = len(VOCABULARY)


def _row(names: list[str]) -> np.ndarray:
    """The final vector of one process making these calls, a millisecond apart."""
    sz = Sessionizer({}, SessionPolicy(min_events=1))
    proc = ProcessInfo("h", "c", 7, 1, "p", "/bin/p", "p")
    events = tuple(Syscall(i * 1_000_000, 7, n, 0, "") for i, n in enumerate(names))
    out = sz.ingest(EventBatch(proc, events)) + sz.flush()
    return vectorize([j for j in out if j.final][-1].session)


def test_waits_move_to_select_and_time_queries_are_added() -> None:
    row = _row(["nanosleep", "read", "poll", "write"] * 25)
    seen = []
    for seed in range(30):
        out = rewrite_row(row, np.random.default_rng(seed))
        shares = out[:N]
        assert abs(shares.sum() - row[:N].sum()) < 1e-5
        assert (out[N:2 * N] > 0).sum() >= (row[N:2 * N] > 0).sum() - 2
        if out[VOCAB_INDEX["select"]] > 0:
            assert out[VOCAB_INDEX["nanosleep"]] == out[VOCAB_INDEX["poll"]] == 0
            assert out[N + VOCAB_INDEX["nanosleep"]] == 0
        clocks = out[VOCAB_INDEX["gettimeofday"]] + out[VOCAB_INDEX["clock_gettime"]]
        if clocks:
            assert 0.1 <= clocks <= 0.65
            assert out[OFFSETS["stats"]] > row[OFFSETS["stats"]]
        seen.append((bool(out[VOCAB_INDEX["select"]]), bool(clocks)))
    assert {(True, False), (False, True), (True, True)} <= set(seen)
    # Blocks the rewrite has no model for are left alone.
    start, stats = 2 * N, OFFSETS["stats"]
    np.testing.assert_array_equal(rewrite_row(row, np.random.default_rng(1))[start:stats],
                                  row[start:stats])


def test_copies_keep_their_label_and_run() -> None:
    rows = np.stack([_row(["read", "nanosleep"] * 20), _row(["write", "poll"] * 20)] * 10)
    labels = np.arange(20) % 2
    runs = np.array([f"r{i}" for i in range(20)], object)
    x, y, g = add_dialect_rows(rows, labels, runs, seed=3, share=0.5)
    assert 20 < len(x) < 40 and x.shape[1] == FEATURE_DIM
    assert len(y) == len(g) == len(x)
    np.testing.assert_array_equal(x[:20], rows)
    for i in range(20, len(x)):
        j = int(g[i][1:])
        assert y[i] == labels[j]
        assert not np.array_equal(x[i], rows[j])
    again = add_dialect_rows(rows, labels, runs, seed=3, share=0.5)
    np.testing.assert_array_equal(again[0], x)
