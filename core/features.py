"""Name-agnostic feature vectors from session state.

The vector never sees the process name, executable path or command line: only
what the process did (syscall mix, syscall pairs, classes of paths, threads,
failures, timing). ``FEATURE_VERSION`` changes whenever the layout does, and the
model's metadata records the version it was trained on.
"""

from __future__ import annotations

import math

import numpy as np

from systerns.core.sessions import BIGRAM_BUCKETS
from systerns.core.syscalls import (
    PATH_CLASS_INDEX,
    PATH_CLASS_NAMES,
    VOCAB_INDEX,
    VOCABULARY,
)

FEATURE_VERSION = 1
_N_SYS = len(VOCABULARY)
_N_PATH = len(PATH_CLASS_NAMES)
_OTHER = VOCAB_INDEX["other"]
_STATS = ("log_events", "log_threads", "log_duration_s", "log_rate",
          "failed_share", "log_distinct_syscalls")

#: Layout of the vector, in order: (block name, width).
LAYOUT: tuple[tuple[str, int], ...] = (
    ("syscall_share", _N_SYS),
    ("syscall_seen", _N_SYS),
    ("bigram_share", BIGRAM_BUCKETS),
    ("path_share", _N_PATH),
    ("path_seen", _N_PATH),
    ("stats", len(_STATS)),
)
FEATURE_DIM = sum(w for _, w in LAYOUT)


def vectorize(session: dict, out: np.ndarray | None = None) -> np.ndarray:
    """Turn one session's state into a float32 vector of ``FEATURE_DIM``.

    Args:
        session: state built by ``core.sessions``.
        out: an optional row to fill in place (for batching without copies).

    Returns:
        The filled vector.
    """
    v = np.zeros(FEATURE_DIM, np.float32) if out is None else out
    if out is not None:
        v.fill(0.0)
    total = max(session["n_events"], 1)
    for name, n in session["counts"].items():
        i = VOCAB_INDEX.get(name, _OTHER)
        v[i] += n / total
        v[_N_SYS + i] = 1.0
    off = 2 * _N_SYS
    bi_total = max(sum(session["bigrams"].values()), 1)
    for b, n in session["bigrams"].items():
        v[off + int(b)] = n / bi_total
    off += BIGRAM_BUCKETS
    p_total = max(sum(session["paths"].values()), 1)
    for cls, n in session["paths"].items():
        i = PATH_CLASS_INDEX.get(cls, PATH_CLASS_INDEX["other_abs"])
        v[off + i] += n / p_total
        v[off + _N_PATH + i] = 1.0
    off += 2 * _N_PATH
    duration_s = max((session["last_ts_ns"] - session["first_ts_ns"]) / 1e9, 1e-3)
    v[off + 0] = math.log1p(session["n_events"]) / 15.0
    v[off + 1] = math.log1p(len(session["tids"])) / 6.0
    v[off + 2] = math.log1p(duration_s) / 10.0
    v[off + 3] = math.log1p(session["n_events"] / duration_s) / 15.0
    v[off + 4] = session["failed"] / total
    v[off + 5] = math.log1p(len(session["counts"])) / 5.0
    return v


def vectorize_many(sessions: list[dict]) -> np.ndarray:
    """Stack the vectors of several sessions into one ``(n, FEATURE_DIM)`` batch."""
    batch = np.zeros((len(sessions), FEATURE_DIM), np.float32)
    for row, s in zip(batch, sessions, strict=True):
        vectorize(s, row)
    return batch
