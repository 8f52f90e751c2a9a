"""Training and test matrices from the lab corpus of recorded runs.

Each run (one recorded command: its label, whether it is malicious, its split)
is replayed through ``core.sessions.Sessionizer`` as the worker would see it (by
``lab.corpus.iter_sessions``). The judgements of the run's labelled main process
become rows: the ``running`` snapshots (partial sessions, what the worker judges
while a miner runs) and the final one, vectorized with ``core.features``.

The split is by run, from the corpus manifest: a run's rows are all in train or
all in test. Runs of a held-out attack family (split ``heldout``) are in
neither. Classes are the labels seen in training, sorted, plus ``unknown``;
a test run of a command never trained on is expected to be ``unknown``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from systerns.core.features import FEATURE_DIM, vectorize
from systerns.core.sessions import SessionPolicy

log = structlog.get_logger(__name__)

UNKNOWN = "unknown"
MANIFEST = "manifest.json"
#: Split of attack families kept out of training and of the test split: they are
#: scored on their own, as attacks the model has never seen.
HELD_OUT = "heldout"


@dataclass(frozen=True, slots=True)
class RunRows:
    """The rows one run yields.

    Attributes:
        run_id: the run's id in the manifest.
        label: the real command (``sha256sum``, ``xmrig``).
        malicious: the run is malicious.
        split: ``train`` or ``test``.
        renamed: the binary ran under another name.
        shown_name: the name the process showed (its disguise when renamed).
        features: ``(n, FEATURE_DIM)`` float32, one row per judgement.
        final: per row, whether it closed its session (else a running snapshot).
        n_events: per row, syscalls the session had seen.
        elapsed_s: per row, seconds from the labelled program's ``execve`` to
            the judgement (the session's last event then).
    """

    run_id: str
    label: str
    malicious: bool
    split: str
    renamed: bool
    shown_name: str
    features: np.ndarray
    final: np.ndarray
    n_events: np.ndarray
    elapsed_s: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Split:
    """Rows of one side of the split, aligned arrays of length ``n``.

    Attributes:
        features: ``(n, FEATURE_DIM)`` float32.
        labels: class index per row (into ``Dataset.classes``).
        label_names: the run's own label per row (may be outside the classes).
        malicious: 1.0 for rows of malicious runs.
        run_ids: run of each row.
        renamed: the row's run used a renamed binary.
        shown_names: the name the row's process showed.
        final: the row closed its session.
        n_events: syscalls the session had seen at that judgement.
        elapsed_s: seconds from the program's start to the judgement (NaN when
            unknown).
    """

    features: np.ndarray
    labels: np.ndarray
    label_names: np.ndarray
    malicious: np.ndarray
    run_ids: np.ndarray
    renamed: np.ndarray
    shown_names: np.ndarray
    final: np.ndarray
    n_events: np.ndarray
    elapsed_s: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_runs(self) -> int:
        """Distinct runs in the split."""
        return len(np.unique(self.run_ids))


@dataclass(frozen=True, slots=True)
class Dataset:
    """Both sides of the split and what they were built from.

    Attributes:
        classes: class names in model output order; the last is ``unknown``.
        train: rows of training runs.
        test: rows of held-out runs.
        corpus_sha256: sha256 of the corpus manifest.
    """

    classes: tuple[str, ...]
    train: Split
    test: Split
    corpus_sha256: str


def corpus_hash(corpus_dir: Path) -> str:
    """sha256 of the corpus manifest file, naming the exact corpus trained on.

    Raises:
        FileNotFoundError: the corpus has no manifest.
    """
    return hashlib.sha256((Path(corpus_dir) / MANIFEST).read_bytes()).hexdigest()


def load_runs(corpus_dir: Path, split: str | None = None) -> list[dict[str, Any]]:
    """The corpus runs with their parsed batches (``lab.corpus.load_corpus``)."""
    from systerns.lab.corpus import load_corpus  # lab is only needed offline

    return load_corpus(Path(corpus_dir), split=split)


def extract_runs(
    corpus_dir: Path,
    runs: Sequence[dict[str, Any]],
    policy: SessionPolicy | None = None,
) -> list[RunRows]:
    """Replay runs and vectorize the judgements of each run's main process.

    ``lab.corpus.iter_sessions`` replays every run through its own sessionizer
    (in small slices, so running judgements fall when a live worker would make
    them) and labels its sessions; only the ``main`` role, the labelled program
    itself after its last ``execve``, becomes rows here. Wrappers and children
    are left out.

    Args:
        corpus_dir: the corpus folder (its manifest names the programs).
        runs: runs from ``load_runs``.
        policy: the sessionizer policy; the worker's defaults when None.

    Returns:
        One ``RunRows`` per run, in the order given (possibly without rows).
    """
    from systerns.lab.corpus import iter_sessions

    rows: dict[str, list[tuple[np.ndarray, bool, int, float]]] = {
        str(r["run_id"]): [] for r in runs
    }
    started = {str(r["run_id"]): int(r.get("main_exec_ts_ns") or 0) for r in runs}
    for snap in iter_sessions(Path(corpus_dir), runs=list(runs), policy=policy):
        if snap["role"] == "main":
            session = snap["session"]
            t0 = started[str(snap["run_id"])] or session["first_ts_ns"]
            rows[str(snap["run_id"])].append(
                (
                    vectorize(session),
                    bool(snap["final"]),
                    int(session["n_events"]),
                    (session["last_ts_ns"] - t0) / 1e9,
                )
            )

    out = []
    for run in runs:
        got = rows[str(run["run_id"])]
        out.append(
            RunRows(
                run_id=str(run["run_id"]),
                label=str(run["label"]),
                malicious=bool(run["malicious"]),
                split=str(run.get("split", "")),
                renamed=bool(run.get("renamed", False)),
                shown_name=str(run.get("shown_name") or run["label"]),
                features=(
                    np.stack([g[0] for g in got])
                    if got
                    else np.zeros((0, FEATURE_DIM), np.float32)
                ),
                final=np.array([g[1] for g in got], bool),
                n_events=np.array([g[2] for g in got], np.int64),
                elapsed_s=np.array([g[3] for g in got], np.float64),
            )
        )
    return out


def classes_for(train_labels: Iterable[str]) -> tuple[str, ...]:
    """Sorted training labels, then ``unknown``."""
    return tuple(sorted(set(train_labels) - {UNKNOWN})) + (UNKNOWN,)


def build_split(runs: Sequence[RunRows], classes: Sequence[str]) -> Split:
    """Stack the rows of runs; labels outside ``classes`` become ``unknown``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = index[UNKNOWN]
    runs = [r for r in runs if len(r.features)]

    def per_row(values: list[Any], dtype: Any) -> np.ndarray:
        return np.array(
            [
                v
                for r, v in zip(runs, values, strict=True)
                for _ in range(len(r.features))
            ],
            dtype=dtype,
        )

    return Split(
        features=(
            np.concatenate([r.features for r in runs])
            if runs
            else np.zeros((0, FEATURE_DIM), np.float32)
        ),
        labels=per_row([index.get(r.label, unknown) for r in runs], np.int32),
        label_names=per_row([r.label for r in runs], object),
        malicious=per_row([float(r.malicious) for r in runs], np.float32),
        run_ids=per_row([r.run_id for r in runs], object),
        renamed=per_row([r.renamed for r in runs], bool),
        shown_names=per_row([r.shown_name for r in runs], object),
        final=(np.concatenate([r.final for r in runs]) if runs else np.zeros(0, bool)),
        n_events=(
            np.concatenate([r.n_events for r in runs])
            if runs
            else np.zeros(0, np.int64)
        ),
        elapsed_s=(
            np.concatenate(
                [
                    r.elapsed_s
                    if r.elapsed_s is not None
                    else np.full(len(r.features), np.nan)
                    for r in runs
                ]
            )
            if runs
            else np.zeros(0, np.float64)
        ),
    )


def build_dataset(corpus_dir: Path, policy: SessionPolicy | None = None, *,
                  exclude_labels: frozenset[str] = frozenset()) -> Dataset:
    """Read the corpus and build both splits, without runs of ``exclude_labels``.

    Raises:
        FileNotFoundError: no corpus manifest.
        ValueError: a run is in neither split, or a run id is repeated, or the
            training side is empty.
    """
    digest = corpus_hash(corpus_dir)
    kept = [r for r in load_runs(corpus_dir) if r.get("label") not in exclude_labels]
    runs = extract_runs(corpus_dir, kept, policy)
    return dataset_from_runs(runs, digest)


def dataset_from_runs(runs: Sequence[RunRows], corpus_sha256: str) -> Dataset:
    """Split already-extracted runs by their manifest split.

    Raises:
        ValueError: a run's split is not train, test or heldout, a run id is
            repeated, or no training run yielded a row.
    """
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError("repeated run ids in the corpus")
    bad = sorted({r.split for r in runs} - {"train", "test", HELD_OUT})
    if bad:
        raise ValueError(f"runs with unknown split {bad}")
    train_runs = [r for r in runs if r.split == "train" and len(r.features)]
    test_runs = [r for r in runs if r.split == "test" and len(r.features)]
    if not train_runs:
        raise ValueError("no training run yielded a judged session")

    classes = classes_for(r.label for r in train_runs)
    dataset = Dataset(
        classes=classes,
        train=build_split(train_runs, classes),
        test=build_split(test_runs, classes),
        corpus_sha256=corpus_sha256,
    )
    empty = [r.run_id for r in runs if not len(r.features)]
    log.info(
        "dataset_built",
        classes=len(classes),
        train_runs=dataset.train.n_runs,
        train_rows=len(dataset.train),
        test_runs=dataset.test.n_runs,
        test_rows=len(dataset.test),
        runs_without_rows=len(empty),
    )
    if empty:
        log.warning("runs_without_rows", run_ids=empty[:20])
    return dataset
