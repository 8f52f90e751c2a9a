"""Name-agnostic feature vectors from session state.

The vector never sees the process name, executable path or command line: only
what the process did (syscall mix, syscall pairs, classes of paths, threads,
failures, timing, I/O shape). ``FEATURE_VERSION`` changes whenever the layout
does, and the model's metadata records the version it was trained on.

Each version extends the one before it: a version-1 vector is the first
``FEATURE_DIMS[1]`` values of a version-2 vector. So the worker computes the
newest version once and a client hands each model the prefix its version
expects (``fit_version``), and models of every version keep working.

Version 2 adds the timing and I/O shape of a session (``core.sessions`` keeps
the state): log-bucketed histograms of read and write return sizes, of the
gaps between consecutive syscalls of a thread split by what the gap followed
(a wait, a read of data, anything else), the share of gap time in each gap
bucket, and a few rates, among them the time spent after reads per byte read
(CPU per byte, what separates hash tools and compressors). What miners share
is CPU burnt between few syscalls; these blocks let the model see it.

Version 3 adds the CPU time the collector read per thread from ``/proc``
(``producers.cputime``; ``core.sessions`` keeps each thread's first and last
reading): whether the session has readings at all, the cores it kept busy,
its busiest thread, how many threads ran at least half the time, the share
of its CPU spent by threads that made no syscall while it was read (a
miner's hashing threads), and CPU per syscall. A miner whose hashing threads
are silent and whose main thread waits in ``select`` looks, through syscalls,
like ``sshd``; through CPU time it does not. Sources without readings (a
capture file read after the fact) leave the block at zero, its first value
included, so a model knows the difference between "idle" and "not read".
"""

from __future__ import annotations

import math

import numpy as np

from systerns.core.sessions import BIGRAM_BUCKETS, SHAPE_BUCKETS
from systerns.core.syscalls import (
    PATH_CLASS_INDEX,
    PATH_CLASS_NAMES,
    VOCAB_INDEX,
    VOCABULARY,
)

FEATURE_VERSION = 3
_N_SYS = len(VOCABULARY)
_N_PATH = len(PATH_CLASS_NAMES)
_OTHER = VOCAB_INDEX["other"]
_STATS = ("log_events", "log_threads", "log_duration_s", "log_rate",
          "failed_share", "log_distinct_syscalls")
_SHAPE_STATS = ("log_ps_per_byte_read", "log_bytes_read", "log_bytes_written",
                "log_read_rate", "log_write_rate", "log_mean_gap")
_GAP_CLASSES = ("b", "c", "r")
_CPU_STATS = ("cpu_read", "cores_busy", "busiest_thread", "log_busy_threads",
              "silent_cpu_share", "log_cpu_per_syscall")
#: A thread read over less than this is left out of the per-thread figures.
_MIN_CPU_WINDOW_NS = 500_000_000

_LAYOUT_V1: tuple[tuple[str, int], ...] = (
    ("syscall_share", _N_SYS),
    ("syscall_seen", _N_SYS),
    ("bigram_share", BIGRAM_BUCKETS),
    ("path_share", _N_PATH),
    ("path_seen", _N_PATH),
    ("stats", len(_STATS)),
)
_LAYOUT_V2: tuple[tuple[str, int], ...] = _LAYOUT_V1 + (
    ("read_size_share", SHAPE_BUCKETS),
    ("write_size_share", SHAPE_BUCKETS),
    ("gap_share", len(_GAP_CLASSES) * SHAPE_BUCKETS),
    ("gap_time_by_class", len(_GAP_CLASSES)),
    ("gap_time_share", SHAPE_BUCKETS),
    ("shape_stats", len(_SHAPE_STATS)),
)
_LAYOUT_V3: tuple[tuple[str, int], ...] = _LAYOUT_V2 + (
    ("cpu_stats", len(_CPU_STATS)),
)
#: Layout of each version's vector, in order: (block name, width).
LAYOUTS: dict[int, tuple[tuple[str, int], ...]] = {
    1: _LAYOUT_V1, 2: _LAYOUT_V2, 3: _LAYOUT_V3,
}
#: Width of each version's vector.
FEATURE_DIMS: dict[int, int] = {v: sum(w for _, w in lay) for v, lay in LAYOUTS.items()}
#: Layout and width of the newest version.
LAYOUT = LAYOUTS[FEATURE_VERSION]
#: Where each block of the newest layout starts in the vector.
OFFSETS: dict[str, int] = {
    name: sum(w for _, w in LAYOUT[:i]) for i, (name, _) in enumerate(LAYOUT)
}
FEATURE_DIM = FEATURE_DIMS[FEATURE_VERSION]
_DIM_V1 = FEATURE_DIMS[1]
_DIM_V2 = FEATURE_DIMS[2]
_GAP_INDEX = {
    f"{c}{b}": i * SHAPE_BUCKETS + b
    for i, c in enumerate(_GAP_CLASSES)
    for b in range(SHAPE_BUCKETS)
}


def fit_version(features: np.ndarray, version: int) -> np.ndarray:
    """The columns a model of ``version`` reads from newest-version vectors.

    Args:
        features: ``(n, d)`` rows of any version at or above ``version``.
        version: the model's feature version.

    Raises:
        ValueError: unknown version, or rows narrower than it needs.
    """
    dim = FEATURE_DIMS.get(version)
    if dim is None:
        raise ValueError(f"unknown feature version {version}")
    if features.shape[-1] < dim:
        raise ValueError(
            f"version {version} needs {dim} features, rows have {features.shape[-1]}"
        )
    return features[..., :dim] if features.shape[-1] > dim else features


def vectorize(
    session: dict, out: np.ndarray | None = None, *, version: int = FEATURE_VERSION
) -> np.ndarray:
    """Turn one session's state into a float32 vector of ``FEATURE_DIMS[version]``.

    Args:
        session: state built by ``core.sessions``.
        out: an optional row to fill in place (for batching without copies).
        version: the feature version to compute.

    Returns:
        The filled vector.

    Raises:
        ValueError: unknown version.
    """
    if version not in FEATURE_DIMS:
        raise ValueError(f"unknown feature version {version}")
    v = np.zeros(FEATURE_DIMS[version], np.float32) if out is None else out
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
    if version >= 2:
        _shape(session, v, _DIM_V1, duration_s)
    if version >= 3:
        _cpu(session, v, _DIM_V2)
    return v


def cpu_summary(session: dict) -> tuple[float, float, float, int, float] | None:
    """What a session's CPU readings say, or None without two readings of a thread.

    Returns:
        ``(cores busy, CPU seconds, busiest thread's share of its time,
        threads busy at least half the time, share of the CPU spent by threads
        between two readings without a syscall)``.
    """
    windows = [w for w in (session.get("cpu") or {}).values() if w[2] > w[0]]
    if not windows:
        return None
    span = max(w[2] for w in windows) - min(w[0] for w in windows)
    if span <= 0:
        return None
    total = busiest = silent = 0.0
    busy_threads = 0
    for w in windows:
        t0, c0, t1, c1 = w[:4]
        used = max(c1 - c0, 0)
        total += used
        silent += w[4] if len(w) > 4 else 0
        if t1 - t0 >= _MIN_CPU_WINDOW_NS:
            share = min(used / (t1 - t0), 1.0)
            busiest = max(busiest, share)
            busy_threads += share >= 0.5
    return (total / span, total / 1e9, busiest, busy_threads,
            min(silent / total, 1.0) if total > 0 else 0.0)


def _cpu(session: dict, v: np.ndarray, off: int) -> None:
    """Fill the version-3 CPU block; a session without two readings leaves zeros."""
    got = cpu_summary(session)
    if got is None:
        return
    cores, cpu_s, busiest, busy_threads, silent_share = got
    v[off + 0] = 1.0
    v[off + 1] = min(cores, 4.0) / 4.0
    v[off + 2] = busiest
    v[off + 3] = math.log1p(busy_threads) / 3.0
    v[off + 4] = silent_share
    v[off + 5] = math.log1p(cpu_s * 1e9 / max(session["n_events"], 1)) / 25.0


def _shares(hist: dict, v: np.ndarray, off: int, width: int) -> None:
    total = sum(hist.values())
    if total <= 0:
        return
    for k, n in hist.items():
        i = int(k)
        if 0 <= i < width:
            v[off + i] = n / total


def _shape(session: dict, v: np.ndarray, off: int, duration_s: float) -> None:
    """Fill the version-2 blocks; a session without that state leaves zeros."""
    _shares(session.get("io_rd") or {}, v, off, SHAPE_BUCKETS)
    off += SHAPE_BUCKETS
    _shares(session.get("io_wr") or {}, v, off, SHAPE_BUCKETS)
    off += SHAPE_BUCKETS
    gaps = session.get("gaps") or {}
    n_gaps = sum(gaps.values())
    if n_gaps > 0:
        for k, n in gaps.items():
            i = _GAP_INDEX.get(k)
            if i is not None:
                v[off + i] = n / n_gaps
    off += len(_GAP_CLASSES) * SHAPE_BUCKETS
    gap_ns = session.get("gap_ns") or {}
    total_ns = sum(gap_ns.values())
    if total_ns > 0:
        for i, c in enumerate(_GAP_CLASSES):
            v[off + i] = gap_ns.get(c, 0) / total_ns
    off += len(_GAP_CLASSES)
    tw = session.get("gap_tw") or {}
    if total_ns > 0:
        for k, ns in tw.items():
            i = int(k)
            if 0 <= i < SHAPE_BUCKETS:
                v[off + i] = ns / total_ns
    off += SHAPE_BUCKETS
    io = session.get("io_bytes") or {}
    read_b, write_b = io.get("r", 0), io.get("w", 0)
    # Picoseconds after reads per byte read: 0 without reads, ~1e3-1e4 for a
    # hash tool, more for a compressor; log-scaled to about [0, 1].
    v[off + 0] = math.log1p(gap_ns.get("r", 0) * 1e3 / read_b) / 20.0 if read_b else 0.0
    v[off + 1] = math.log1p(read_b) / 25.0
    v[off + 2] = math.log1p(write_b) / 25.0
    v[off + 3] = math.log1p(read_b / duration_s) / 25.0
    v[off + 4] = math.log1p(write_b / duration_s) / 25.0
    v[off + 5] = math.log1p(total_ns / n_gaps) / 25.0 if n_gaps else 0.0


def vectorize_many(
    sessions: list[dict], *, version: int = FEATURE_VERSION
) -> np.ndarray:
    """Stack the vectors of several sessions into one ``(n, FEATURE_DIMS[version])``."""
    batch = np.zeros((len(sessions), FEATURE_DIMS[version]), np.float32)
    for row, s in zip(batch, sessions, strict=True):
        vectorize(s, row, version=version)
    return batch
