"""Out-of-fold evaluation: every run of the corpus scored by a model that never saw it.

The test split of one corpus holds about a quarter of its runs, too few benign
sessions to show a false positive rate of 0.1% (zero false alerts in ``n``
sessions bounds the rate below about ``3 / n`` at 95%). Cross-validation by run
scores every train and test run once: the runs (never the held-out family) are
dealt into ``k`` folds per label, and for each fold a model is trained with the
product's training code and settings on the other folds and judges the fold.
All of a run's rows are in one fold.

This measures the training procedure (corpus + features + model settings), not
one exported version; ``evaluate`` reports the exported version on the test
split. Bounds are one-sided 95% Clopper-Pearson.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from systerns.serving.dataset import (
    HELD_OUT,
    RunRows,
    build_split,
    classes_for,
    corpus_hash,
    extract_runs,
    load_runs,
)
from systerns.serving.evaluate import (
    session_level,
    split_metrics,
    threshold_for_fpr,
    time_to_alert,
)
from systerns.serving.model import (
    DEFAULT_MALICIOUS_THRESHOLD,
    OUTPUT_COMMAND,
    OUTPUT_MALICIOUS,
    FitConfig,
    fit_model,
)

log = structlog.get_logger(__name__)


def assign_folds(runs: Sequence[RunRows], k: int, seed: int) -> dict[str, int]:
    """Deal each label's runs into ``k`` folds, deterministically.

    Raises:
        ValueError: ``k`` below 2.
    """
    if k < 2:
        raise ValueError("cross-validation needs at least two folds")
    by_label: dict[str, list[str]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.run_id):
        by_label[r.label].append(r.run_id)
    folds: dict[str, int] = {}
    for label in sorted(by_label):
        ids = by_label[label]
        random.Random(f"{seed}/{label}").shuffle(ids)  # noqa: S311 - seeded split, not security
        start = random.Random(f"{seed}/{label}/start").randrange(k)  # noqa: S311
        for i, run_id in enumerate(ids):
            folds[run_id] = (start + i) % k
    return folds


def upper_bound(failures: int, trials: int, confidence: float = 0.95) -> float | None:
    """One-sided Clopper-Pearson upper bound of a rate (None without trials)."""
    if trials <= 0:
        return None
    if failures >= trials:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, failures + 1, trials - failures))


def lower_bound(successes: int, trials: int, confidence: float = 0.95) -> float | None:
    """One-sided Clopper-Pearson lower bound of a rate (None without trials)."""
    if trials <= 0:
        return None
    if successes <= 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(1 - confidence, successes, trials - successes + 1))


def cross_validate(
    corpus_dir: Path,
    *,
    k: int = 4,
    seed: int = 7,
    config: FitConfig | None = None,
    threshold: float = DEFAULT_MALICIOUS_THRESHOLD,
    exclude_labels: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Out-of-fold command and malicious figures over a whole corpus.

    Args:
        corpus_dir: the lab corpus.
        k: folds.
        seed: seed of the folds and of each fold's training.
        config: training settings; the product's ``FitConfig()`` when None.
        threshold: malicious probability at which an alert is raised.
        exclude_labels: labels left out entirely, as ``train`` leaves them out.

    Returns:
        ``split_metrics`` of the out-of-fold rows plus session counts, false
        alerts, missed miners, their 95% bounds and time to first alert.
    """
    import tensorflow as tf

    started = time.monotonic()
    config = config or FitConfig()
    runs = [
        r
        for r in extract_runs(corpus_dir, [run for run in load_runs(corpus_dir)
                                           if run.get("label") not in exclude_labels])
        if r.split != HELD_OUT and len(r.features)
    ]
    classes = classes_for(r.label for r in runs)
    folds = assign_folds(runs, k, seed)
    tf.config.experimental.enable_op_determinism()
    parts = []
    for fold in range(k):
        train = build_split([r for r in runs if folds[r.run_id] != fold], classes)
        held = build_split([r for r in runs if folds[r.run_id] == fold], classes)
        model = fit_model(
            train.features,
            train.labels,
            train.malicious,
            train.run_ids,
            len(classes),
            config,
            seed=seed,
            label_names=train.label_names,
        )
        out = model(tf.constant(held.features), training=False)
        parts.append(
            (
                held,
                np.asarray(out[OUTPUT_COMMAND]),
                np.asarray(out[OUTPUT_MALICIOUS]).reshape(-1),
            )
        )
        log.info("crossval_fold_done", fold=fold + 1, folds=k,
                 train_runs=train.n_runs, held_runs=held.n_runs)
    # The folds' rows, stacked in the order they were judged.
    split = build_split([r for p in parts for r in _runs_of(p[0], runs)], classes)
    probs = np.concatenate([p[1] for p in parts])
    mal = np.concatenate([p[2] for p in parts])
    metrics = split_metrics(classes, split, probs, mal, threshold)
    ids, truth, score = session_level(split, mal)
    label_of = {r.run_id: r.label for r in runs}
    benign, miners = int((~truth).sum()), int(truth.sum())
    false_alerts = int(((score >= threshold) & ~truth).sum())
    caught = int(((score >= threshold) & truth).sum())
    tta = time_to_alert(split, mal, threshold)
    seconds = [v for v in tta.values() if v is not None]
    metrics |= {
        "folds": k,
        "seed": seed,
        "corpus_sha256": corpus_hash(corpus_dir),
        "excluded_labels": sorted(exclude_labels),
        "benign_sessions": benign,
        "miner_sessions": miners,
        "miner_sessions_by_label": dict(sorted(_tally(
            label_of[str(i)] for i, t in zip(ids, truth, strict=True) if t
        ).items())),
        "false_alert_sessions": false_alerts,
        "fpr_sessions": false_alerts / benign if benign else None,
        "fpr_upper_95": upper_bound(false_alerts, benign),
        "miner_caught_sessions": caught,
        "miner_recall_sessions": caught / miners if miners else None,
        "miner_recall_lower_95": lower_bound(caught, miners),
        "max_malicious_benign_session": float(score[~truth].max()) if benign else None,
        "min_malicious_miner_session": float(score[truth].min()) if miners else None,
        "session_threshold_fpr_0_001": threshold_for_fpr(truth, score, 0.001),
        "miner_time_to_alert_s": {
            "median": float(np.median(seconds)) if seconds else None,
            "max": max(seconds) if seconds else None,
            "never": sum(v is None for v in tta.values()),
        },
        "duration_s": round(time.monotonic() - started, 1),
    }
    log.info(
        "crossval_done",
        benign_sessions=benign,
        false_alerts=false_alerts,
        miner_sessions=miners,
        caught=caught,
        top1=metrics["top1_accuracy_runs"],
    )
    return metrics


def _runs_of(split: Any, runs: Sequence[RunRows]) -> list[RunRows]:
    """The RunRows of a split, in the split's row order."""
    by_id = {r.run_id: r for r in runs}
    seen: list[str] = []
    for rid in split.run_ids:
        if not seen or seen[-1] != rid:
            seen.append(str(rid))
    return [by_id[rid] for rid in seen]


def _tally(names: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for name in names:
        out[name] += 1
    return out


def write_report(metrics: dict[str, Any], path: Path) -> Path:
    """A short Markdown report of the out-of-fold figures."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    def bound(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.3f}%"

    def secs(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f} s"

    lines = [
        "# Out-of-fold evaluation (cross-validation by run)",
        "",
        f"Corpus manifest sha256 `{metrics['corpus_sha256'][:16]}...`, "
        f"{metrics['folds']} folds by run, stratified by label, seed "
        f"{metrics['seed']}; each fold judged by a model trained with the "
        "product's settings on the other folds. The held-out family is in no "
        "fold. Bounds: one-sided 95% Clopper-Pearson."
        + (f" Left out, as in training: {', '.join(metrics['excluded_labels'])}."
           if metrics.get("excluded_labels") else ""),
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| runs scored | {metrics['runs']} |",
        f"| command top-1, exact | {pct(metrics['top1_accuracy_runs'])} |",
        f"| command top-1, exact, renamed | "
        f"{pct(metrics['top1_accuracy_renamed_runs'])} |",
        f"| command top-1, hash merged | "
        f"{pct(metrics['top1_hash_merged_accuracy_runs'])} |",
        f"| command top-1, alias-aware | {pct(metrics['top1_alias_accuracy_runs'])} |",
        f"| benign sessions | {metrics['benign_sessions']} |",
        f"| false alerts (crypto_mining, p >= threshold) | "
        f"{metrics['false_alert_sessions']} |",
        f"| false positive rate per session | {pct(metrics['fpr_sessions'])} "
        f"(95% upper bound {bound(metrics['fpr_upper_95'])}) |",
        f"| miner sessions | {metrics['miner_sessions']} "
        f"({metrics['miner_sessions_by_label']}) |",
        f"| miner recall per session | {pct(metrics['miner_recall_sessions'])} "
        f"(95% lower bound {bound(metrics['miner_recall_lower_95'])}) |",
        f"| highest malicious p, benign session | "
        f"{metrics['max_malicious_benign_session']:.4f} |",
        f"| lowest malicious p, miner session | "
        f"{metrics['min_malicious_miner_session']:.4f} |",
        f"| miner time to first alert (median / max) | "
        f"{secs(metrics['miner_time_to_alert_s']['median'])} / "
        f"{secs(metrics['miner_time_to_alert_s']['max'])} |",
        "",
        "Per-command accuracy (runs, exact):",
        "",
        "| command | accuracy |",
        "| --- | --- |",
    ]
    for name, acc in sorted(metrics["per_class_accuracy_runs"].items()):
        lines.append(f"| {name} | {pct(acc)} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m systerns.serving.crossval CORPUS [--folds K] [--report FILE]``."""
    from systerns.core.logs import configure

    configure()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus_dir", type=Path)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--exclude-label", action="append", default=[],
                        help="leave this label's runs out (repeatable)")
    args = parser.parse_args(argv)
    metrics = cross_validate(args.corpus_dir, k=args.folds, seed=args.seed,
                             exclude_labels=frozenset(args.exclude_label))
    slim = {k: v for k, v in metrics.items() if k not in ("confusion_runs",)}
    if args.report is not None:
        write_report(metrics, args.report)
    if args.json is not None:
        args.json.write_text(json.dumps(slim, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in slim.items() if not isinstance(v, list | dict)},
                     indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
