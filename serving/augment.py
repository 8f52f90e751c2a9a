"""Syscall dialects: training copies of rows as other kernels and runtimes show them.

The same program makes different syscalls on different machines. On a VM
whose clock source has no vDSO, every ``gettimeofday``/``clock_gettime`` is a
real syscall (the lab's machine answers them in user space, so strace never
sees one); older runtimes sleep in ``select`` where newer ones use
``nanosleep``, ``poll`` or ``epoll_wait`` (Python 2's ``time.sleep``, old Go
timers). The real captures in ``shared/data/scap`` come from such a machine:
half of their daemons' syscalls are time queries and ``select`` sleeps, which
no lab recording has, and a model never shown them reads those sessions as
unlike anything benign.

``add_dialect_rows`` appends, for a random share of the training rows,
copies rewritten in such a dialect, with the row's own label and run: the
waits moved to ``select``, and/or a share of time queries added. Benign and
malicious rows alike, so the dialect itself says nothing about the label.
Only vector blocks with a direct meaning are rewritten (syscall shares and
presence, the event count and rate, the failed share, the distinct count);
bigrams and timing are left as they were. Test rows are never rewritten.
"""

from __future__ import annotations

import math

import numpy as np

from systerns.core.features import OFFSETS
from systerns.core.syscalls import VOCAB_INDEX, VOCABULARY

_N = len(VOCABULARY)
_STATS = OFFSETS["stats"]
#: Calls an old runtime makes as ``select`` instead.
_WAITS_TO_SELECT = tuple(VOCAB_INDEX[n] for n in ("nanosleep", "poll"))
_SELECT = VOCAB_INDEX["select"]
_CLOCKS = (VOCAB_INDEX["gettimeofday"], VOCAB_INDEX["clock_gettime"])
#: Share of the rows copied, and the range of time-query shares added.
COPY_SHARE = 0.5
CLOCK_SHARE = (0.1, 0.65)


def rewrite_row(row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One row in a random dialect (waits in ``select``, time queries, or both)."""
    out = row.copy()
    kind = rng.integers(3)  # 0: waits, 1: clocks, 2: both
    if kind in (0, 2):
        for i in _WAITS_TO_SELECT:
            if out[_N + i] > 0:
                out[_SELECT] += out[i]
                out[i] = 0.0
                out[_N + i] = 0.0
                out[_N + _SELECT] = 1.0
    if kind in (1, 2):
        t = float(rng.uniform(*CLOCK_SHARE))
        col = _CLOCKS[int(rng.integers(len(_CLOCKS)))]
        new = out[_N + col] == 0
        out[:_N] *= 1.0 - t
        out[col] += t
        out[_N + col] = 1.0
        grow = -math.log1p(-t) / 15.0  # n events -> n / (1 - t), log scaled
        out[_STATS + 0] += grow
        out[_STATS + 3] += grow
        out[_STATS + 4] *= 1.0 - t
        if new:
            k = math.expm1(out[_STATS + 5] * 5.0)
            out[_STATS + 5] = math.log1p(round(k) + 1) / 5.0
    return out


def add_dialect_rows(
    features: np.ndarray,
    *columns: np.ndarray,
    seed: int,
    share: float = COPY_SHARE,
) -> tuple[np.ndarray, ...]:
    """Append rewritten copies of a random ``share`` of the rows.

    Args:
        features: ``(n, FEATURE_DIM)`` training rows.
        columns: per-row arrays (labels, malicious, run ids, ...) copied along.
        seed: RNG seed (the same seed gives the same rows).
        share: fraction of rows copied.

    Returns:
        ``features`` and each of ``columns``, extended.
    """
    rng = np.random.default_rng(seed)
    n = len(features)
    picked = np.flatnonzero(rng.random(n) < share)
    if not len(picked):
        return (features, *columns)
    extra = np.stack([rewrite_row(features[i], rng) for i in picked]).astype(
        features.dtype
    )
    out = [np.concatenate([features, extra])]
    out += [np.concatenate([c, c[picked]]) for c in columns]
    return tuple(out)


def add_cpu_blind_rows(
    features: np.ndarray,
    labels: np.ndarray,
    malicious: np.ndarray,
    groups: np.ndarray,
    eligible: np.ndarray,
    *,
    seed: int,
    share: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Append copies of rows with CPU readings, their CPU block zeroed.

    A collector that reads ``/proc`` sends CPU readings; a capture file read
    after the fact has none, and its sessions show a zero CPU block (feature
    version 3). These copies, with the row's own label and run, teach the
    model the second case from the same programs. Only ``eligible`` rows that
    have readings are copied, a random ``share`` of them.
    """
    start = OFFSETS.get("cpu_stats")
    if start is None or share <= 0:
        return features, labels, malicious, groups
    has = (features[:, start] > 0) & eligible
    rng = np.random.default_rng(seed + 104729)
    pick = np.flatnonzero(has & (rng.random(len(features)) < share))
    if not len(pick):
        return features, labels, malicious, groups
    copies = features[pick].copy()
    copies[:, start:] = 0.0
    return (
        np.concatenate([features, copies]),
        np.concatenate([labels, labels[pick]]),
        np.concatenate([malicious, malicious[pick]]),
        np.concatenate([groups, groups[pick]]),
    )
