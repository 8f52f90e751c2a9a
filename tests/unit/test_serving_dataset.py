"""Rows and splits of ``serving.dataset``, on hand-made plumbing runs.

PLUMBING DATA: the runs below are short syscall streams written for these tests
(labels ``plumbing_*``); they check the replay, row selection and split logic,
not anything about real programs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.features import FEATURE_DIM, FEATURE_DIMS
from systerns.core.syscalls import VOCABULARY
from systerns.serving.dataset import (
    UNKNOWN,
    RunRows,
    classes_for,
    corpus_hash,
    dataset_from_runs,
    extract_runs,
)

SECOND_NS = 1_000_000_000
START_NS = 10**18
_LOG_EVENTS = FEATURE_DIMS[1] - 6  # first of the v1 stats block: log1p(n_events) / 15
_N_SYS = len(VOCABULARY)  # the syscall_share block comes first


def _batches(
    pid: int, comm: str, seconds: int, per_second: int = 30, exec_first: bool = False
) -> list[EventBatch]:
    """A process making ``per_second`` syscalls each second, one batch a second."""
    info = ProcessInfo("plumbing-host", "run", pid, 1, comm, f"/usr/bin/{comm}", comm)
    out = []
    for s in range(seconds):
        names = [("read", "write", "openat")[i % 3] for i in range(per_second)]
        if exec_first and s == 0:
            names[0] = "execve"
        events = tuple(
            Syscall(START_NS + s * SECOND_NS + i * 1000, pid, n, 0, "/srv/plumbing")
            for i, n in enumerate(names)
        )
        out.append(EventBatch(info, events, "strace"))
    return out


def _run(run_id: str, label: str, split: str, seconds: int = 2, **extra) -> dict:
    """A run in ``lab.corpus.load_corpus``'s shape, main process pid 100."""
    return {
        "run_id": run_id,
        "label": label,
        "malicious": label == "plumbing_miner",
        "split": split,
        "renamed": False,
        "main_pid": 100,
        "main_exec_ts_ns": 0,
        "batches": _batches(100, label, seconds),
    } | extra


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps({"runs": [], "programs": {}}))
    return tmp_path


def test_running_snapshots_then_final(corpus: Path) -> None:
    (rows,) = extract_runs(corpus, [_run("r", "plumbing_a", "train", seconds=12)])

    assert rows.features.shape[1] == FEATURE_DIM
    assert len(rows.features) >= 3  # running at about 3 s and 8 s, then final
    assert rows.final.tolist() == [False] * (len(rows.final) - 1) + [True]
    assert list(rows.n_events) == sorted(rows.n_events)
    assert rows.n_events[-1] == 12 * 30


def test_running_snapshot_is_vectorized_as_judged(corpus: Path) -> None:
    # A running judgement shares counters with the live session; its row must
    # still describe the session as it was at that moment.
    (rows,) = extract_runs(corpus, [_run("r", "plumbing_a", "train", seconds=12)])

    expected = [math.log1p(n) / 15.0 for n in rows.n_events]
    np.testing.assert_allclose(rows.features[:, _LOG_EVENTS], expected, rtol=1e-6)
    # Shares are counts over the snapshot's total: counted later, they pass 1.
    np.testing.assert_allclose(rows.features[:, :_N_SYS].sum(axis=1), 1.0, rtol=1e-5)


def test_rows_only_from_main_process(corpus: Path) -> None:
    main = _batches(100, "plumbing_a", 2)
    child = _batches(101, "plumbing_child", 2, per_second=50)
    run = _run("r", "plumbing_a", "train")
    run["batches"] = [b for pair in zip(main, child, strict=True) for b in pair]

    (rows,) = extract_runs(corpus, [run])

    assert rows.n_events.tolist() == [60]


def test_wrapper_image_before_exec_is_left_out(corpus: Path) -> None:
    wrapper = _batches(100, "plumbing_wrapper", 1)
    shifted = [
        EventBatch(
            b.process,
            tuple(
                Syscall(e.ts_ns + 5 * SECOND_NS, e.tid, e.name, e.res, e.arg)
                for e in b.events
            ),
            b.source,
        )
        for b in _batches(100, "plumbing_b", 2, exec_first=True)
    ]
    run = _run(
        "r",
        "plumbing_b",
        "train",
        batches=wrapper + shifted,
        main_exec_ts_ns=shifted[0].events[0].ts_ns,
    )

    (rows,) = extract_runs(corpus, [run])

    # The program's full session, then its mid-life view (never final).
    assert rows.n_events.tolist() == [60, 30]
    assert rows.final.tolist() == [True, False]


def test_short_process_yields_no_row(corpus: Path) -> None:
    info = ProcessInfo("h", "run", 100, 1, "x", "/usr/bin/x", "x")
    run = _run(
        "r",
        "plumbing_a",
        "train",
        batches=[EventBatch(info, (Syscall(START_NS, 100, "read"),), "strace")],
    )

    (rows,) = extract_runs(corpus, [run])

    assert rows.features.shape == (0, FEATURE_DIM)


def test_split_by_run_and_unknown_class(corpus: Path) -> None:
    runs = extract_runs(
        corpus,
        [
            _run("t1", "plumbing_a", "train"),
            _run("t2", "plumbing_b", "train"),
            _run("t3", "plumbing_miner", "train", seconds=12),
            _run("h1", "plumbing_a", "test", renamed=True, shown_name="kworker"),
            _run("h2", "plumbing_never_trained", "test"),
        ],
    )

    data = dataset_from_runs(runs, corpus_hash(corpus))

    assert data.classes == ("plumbing_a", "plumbing_b", "plumbing_miner", UNKNOWN)
    assert set(data.train.run_ids) == {"t1", "t2", "t3"}
    assert set(data.test.run_ids) == {"h1", "h2"}
    assert not set(data.train.run_ids) & set(data.test.run_ids)
    unseen = data.test.label_names == "plumbing_never_trained"
    assert (data.test.labels[unseen] == data.classes.index(UNKNOWN)).all()
    assert data.test.renamed[data.test.run_ids == "h1"].all()
    assert set(data.test.shown_names[data.test.run_ids == "h1"]) == {"kworker"}
    assert set(data.test.shown_names[data.test.run_ids == "h2"]) == {
        "plumbing_never_trained"
    }
    miner_rows = data.train.run_ids == "t3"
    assert miner_rows.sum() >= 3
    assert (data.train.malicious == miner_rows).all()
    assert len(data.train.features) == len(data.train.labels) == len(data.train.final)
    assert len(data.corpus_sha256) == 64


def test_repeated_run_id_is_refused(corpus: Path) -> None:
    runs = extract_runs(
        corpus, [_run("a", "plumbing_a", "train"), _run("b", "plumbing_a", "test")]
    )
    runs[1] = dataclasses.replace(runs[1], run_id="a")

    with pytest.raises(ValueError, match="repeated"):
        dataset_from_runs(runs, "h")


def test_unknown_split_is_refused(corpus: Path) -> None:
    runs = extract_runs(corpus, [_run("r", "plumbing_a", "validation")])

    with pytest.raises(ValueError, match="split"):
        dataset_from_runs(runs, "h")


def test_no_training_rows_is_refused() -> None:
    empty = RunRows(
        run_id="r",
        label="plumbing_a",
        malicious=False,
        split="train",
        renamed=False,
        shown_name="plumbing_a",
        features=np.zeros((0, FEATURE_DIM), np.float32),
        final=np.zeros(0, bool),
        n_events=np.zeros(0, int),
    )

    with pytest.raises(ValueError, match="no training run"):
        dataset_from_runs([empty], "h")


def test_classes_sorted_with_unknown_last() -> None:
    assert classes_for(["b", "a", "b", UNKNOWN]) == ("a", "b", UNKNOWN)


def test_long_runs_are_also_seen_from_mid_life(corpus: Path) -> None:
    """A second replay without the program's start, as a worker meets a process
    already running when its collector started; never for XMRig's benchmark."""
    from systerns.lab.corpus import MIDLIFE_SKIP_S, iter_sessions

    batches = _batches(100, "plumbing_b", 10, exec_first=True)
    start = batches[0].events[0].ts_ns
    runs = [
        _run("b", "plumbing_b", "train", batches=batches, main_exec_ts_ns=start),
        _run("x", "xmrig", "train", batches=batches, main_exec_ts_ns=start),
    ]
    snaps = list(iter_sessions(corpus, runs=runs))
    mid = [s for s in snaps if s["view"] == "midlife"]

    assert mid and {s["run_id"] for s in mid} == {"b"}
    assert not any(s["final"] for s in mid)
    cut = start + int(MIDLIFE_SKIP_S * SECOND_NS)
    assert all(s["session"]["first_ts_ns"] >= cut for s in mid)
    assert all("execve" not in s["session"]["counts"] for s in mid)
    full = [s for s in snaps if s["run_id"] == "b" and s["view"] == "full"]
    assert full[-1]["final"] and full[-1]["session"]["n_events"] == 300
    assert max(s["session"]["n_events"] for s in mid) == 300 - 3 * 30
    (rows_b, rows_x) = extract_runs(corpus, runs)
    assert len(rows_b.features) > len(rows_x.features)
    assert rows_b.final.sum() == rows_x.final.sum() == 1
