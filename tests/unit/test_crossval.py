"""Out-of-fold evaluation helpers: folds by run, bounds, the report."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from systerns.serving.crossval import (
    assign_folds,
    lower_bound,
    upper_bound,
    write_report,
)
from systerns.serving.dataset import RunRows


def _rows(run_id: str, label: str) -> RunRows:
    return RunRows(run_id, label, label == "miner", "train", False, label,
                   np.zeros((1, 3), np.float32), np.ones(1, bool),
                   np.ones(1, np.int64))


def test_folds_are_by_run_stratified_and_deterministic() -> None:
    runs = [_rows(f"ls-{i}", "ls") for i in range(10)]
    runs += [_rows(f"miner-{i}", "miner") for i in range(5)]

    folds = assign_folds(runs, 4, seed=7)
    again = assign_folds(list(reversed(runs)), 4, seed=7)
    other = assign_folds(runs, 4, seed=8)

    assert folds == again and folds != other
    assert set(folds) == {r.run_id for r in runs}
    for label, n in (("ls", 10), ("miner", 5)):
        sizes = Counter(f for rid, f in folds.items() if rid.startswith(label))
        assert sum(sizes.values()) == n
        assert max(sizes.values()) - min(sizes.values()) <= 1
    with pytest.raises(ValueError):
        assign_folds(runs, 1, seed=7)


def test_bounds_match_the_rule_of_three() -> None:
    assert upper_bound(0, 3000) == pytest.approx(1 - 0.05 ** (1 / 3000), rel=1e-6)
    assert upper_bound(0, 3000) < 0.001 < upper_bound(0, 1000)
    assert lower_bound(300, 300) == pytest.approx(0.05 ** (1 / 300), rel=1e-6)
    assert upper_bound(2, 100) > upper_bound(0, 100)
    assert upper_bound(0, 0) is None and lower_bound(0, 0) is None
    assert lower_bound(0, 10) == 0.0 and upper_bound(10, 10) == 1.0


def test_report_states_counts_and_bounds(tmp_path: Path) -> None:
    metrics = {
        "corpus_sha256": "ab" * 32, "folds": 4, "seed": 7, "runs": 12,
        "top1_accuracy_runs": 0.9, "top1_accuracy_renamed_runs": 1.0,
        "top1_hash_merged_accuracy_runs": 0.95, "top1_alias_accuracy_runs": 0.92,
        "benign_sessions": 10, "false_alert_sessions": 0, "fpr_sessions": 0.0,
        "fpr_upper_95": upper_bound(0, 10), "miner_sessions": 2,
        "miner_sessions_by_label": {"miner": 2}, "miner_recall_sessions": 1.0,
        "miner_recall_lower_95": lower_bound(2, 2),
        "max_malicious_benign_session": 0.01, "min_malicious_miner_session": 0.99,
        "miner_time_to_alert_s": {"median": 4.0, "max": 6.0, "never": 0},
        "per_class_accuracy_runs": {"ls": 1.0, "miner": 1.0},
    }

    text = write_report(metrics, tmp_path / "cv.md").read_text()

    assert "| benign sessions | 10 |" in text
    assert "25.887%" in text  # 1 - 0.05 ** (1 / 10)
    assert "4.0 s / 6.0 s" in text
    assert "| miner | 100.00% |" in text
