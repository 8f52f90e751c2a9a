"""The evaluation baselines: the miner name rule and the syscall n-gram model."""

from __future__ import annotations

import numpy as np
import pytest

from systerns.serving.baselines import (
    NgramBaseline,
    name_rule_is_miner,
    name_rule_outputs,
    ngrams,
)
from systerns.serving.dataset import UNKNOWN
from systerns.serving.evaluate import merge_hash, operating_point, threshold_for_fpr


@pytest.mark.parametrize(
    ("name", "cmdline", "hit"),
    [
        ("xmrig", [], True),
        ("/opt/miner/xmrig-6.16", ["--bench=1M"], True),
        ("sshd", ["--bench=1M", "-t", "2"], False),
        ("kworker", ["-o", "stratum+tcp://pool:3333"], True),
        ("nginx", "nginx -g daemon off;", False),
        ("bash", "bash -c ./kdevtmpfsi &", True),
    ],
)
def test_name_rule_sees_names_and_pool_strings_only(name, cmdline, hit) -> None:
    assert name_rule_is_miner(name, cmdline) is hit


def test_name_rule_outputs_answer_the_shown_name() -> None:
    classes = ("ls", "xmrig", UNKNOWN)

    probs, mal = name_rule_outputs(classes, ["ls", "kworker", "xmrig"], [[], [], []])

    assert probs.argmax(axis=1).tolist() == [0, 2, 1]
    assert mal.tolist() == [0.0, 0.0, 1.0]


def test_ngrams_of_a_sequence() -> None:
    assert ngrams(["read", "write", "read"]) == [
        "read",
        "write",
        "read",
        "read write",
        "write read",
        "read write read",
    ]


def test_ngram_baseline_separates_distinct_patterns() -> None:
    reader = ["openat", "read", "read", "write", "close"] * 10
    miner = ["sched_setaffinity", "futex", "mmap", "futex"] * 10
    docs = [reader[: 20 + i] for i in range(6)] + [miner[: 20 + i] for i in range(6)]
    labels = np.array([0] * 6 + [1] * 6)
    mal = np.array([0.0] * 6 + [1.0] * 6)

    model = NgramBaseline(("cat", "xmrig", UNKNOWN), seed=3).fit(docs, labels, mal)
    probs, p_mal = model.predict([reader[:30], miner[:30]])

    assert probs.argmax(axis=1).tolist() == [0, 1]
    assert p_mal[0] < 0.5 < p_mal[1]


def test_hash_tools_merge_into_one_class() -> None:
    assert merge_hash("sha256sum") == merge_hash("cksum") == "hash"
    assert merge_hash("sort") == "sort"


def test_threshold_for_fpr_keeps_negatives_below() -> None:
    truth = np.array([False] * 10 + [True] * 2)
    score = np.array([0.1] * 9 + [0.6] + [0.7, 0.95])

    thr = threshold_for_fpr(truth, score, 0.0)
    op = operating_point(truth, score, thr)

    assert 0.6 < thr <= 0.7
    assert (op["recall"], op["false_positive_rate"]) == (1.0, 0.0)
