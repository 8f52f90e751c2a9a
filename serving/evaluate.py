"""Held-out evaluation of an exported model on the corpus test split.

Figures are given twice: per run (the final judgement of the run's main session
for the command; any judgement over the threshold for an alert) and per row (every
judgement, running snapshots included). Runs are the honest unit: rows of one run
are strongly alike, and the worker alerts once per session.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from systerns.core.verdicts import ModelAnswer, VerdictPolicy, names_match, reasons_for
from systerns.serving.client import LocalModel
from systerns.serving.dataset import (
    UNKNOWN,
    Split,
    build_split,
    corpus_hash,
    extract_runs,
    load_runs,
)

log = structlog.get_logger(__name__)


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _run_index(split: Split) -> list[np.ndarray]:
    """Row indices of each run, runs in first-seen order."""
    _, first, inverse = np.unique(split.run_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    return [np.flatnonzero(inverse == k) for k in order]


def split_metrics(
    classes: tuple[str, ...],
    split: Split,
    command_probs: np.ndarray,
    malicious: np.ndarray,
    threshold: float,
    policy: VerdictPolicy | None = None,
) -> dict[str, Any]:
    """Command and malicious figures for one split's model outputs.

    Alias-aware accuracy counts a prediction as right when ``core.verdicts``
    accepts the true command's name for it (``sha1sum`` for ``sha256sum``).
    Masquerade figures replay ``core.verdicts.reasons_for`` on every row, with
    the name the process showed, as the worker would.

    Args:
        classes: class names in output order.
        split: the rows scored.
        command_probs: ``(n, n_classes)`` outputs for the rows.
        malicious: ``(n,)`` outputs for the rows.
        threshold: malicious probability at which an alert is raised.
        policy: the verdict policy for masquerade alerts; the default policy with
            ``threshold`` when None.

    Returns:
        A JSON-ready dict (see the report for the meaning of each key).
    """
    predicted = np.argmax(command_probs, axis=1) if len(split) else np.zeros(0, int)
    confidence = command_probs.max(axis=1) if len(split) else np.zeros(0)
    runs = _run_index(split)
    # The run's verdict on the command is its last final judgement.
    last = np.array(
        [
            idx[split.final[idx]][-1] if split.final[idx].any() else idx[-1]
            for idx in runs
        ],
        dtype=int,
    )
    run_true = split.labels[last]
    run_pred = predicted[last]
    run_ok = run_true == run_pred
    renamed = split.renamed[last]
    run_mal = split.malicious[last] > 0.5
    run_alert = np.array([bool((malicious[idx] >= threshold).any()) for idx in runs])
    run_alias_ok = np.array(
        [
            names_match(str(split.label_names[i]), classes[p])
            for i, p in zip(last, run_pred, strict=True)
        ],
        dtype=bool,
    )
    policy = policy or VerdictPolicy(malicious_threshold=threshold)
    row_masquerade = np.array(
        [
            "masquerading"
            in reasons_for(
                {"n_events": int(n_ev), "comm": str(shown), "exe": str(shown)},
                ModelAnswer(classes[p], float(c), float(m), 0),
                policy,
            )
            for n_ev, shown, p, c, m in zip(
                split.n_events,
                split.shown_names,
                predicted,
                confidence,
                malicious,
                strict=True,
            )
        ],
        dtype=bool,
    )
    run_masquerade = np.array([bool(row_masquerade[idx].any()) for idx in runs])
    benign_renamed = renamed & ~run_mal
    benign_plain = ~renamed & ~run_mal

    n = len(classes)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (run_true, run_pred), 1)
    per_class = {
        c: _rate(int(confusion[i, i]), int(confusion[i].sum()))
        for i, c in enumerate(classes)
        if confusion[i].sum()
    }
    row_mal = split.malicious > 0.5
    row_alert = malicious >= threshold
    auc = None
    if row_mal.any() and (~row_mal).any():
        from sklearn.metrics import roc_auc_score

        auc = round(float(roc_auc_score(row_mal, malicious)), 4)

    unknown = classes.index(UNKNOWN)
    return {
        "runs": len(runs),
        "rows": len(split),
        "top1_accuracy_runs": _rate(int(run_ok.sum()), len(runs)),
        "top1_accuracy_renamed_runs": _rate(
            int(run_ok[renamed].sum()), int(renamed.sum())
        ),
        "renamed_runs": int(renamed.sum()),
        "top1_alias_accuracy_runs": _rate(int(run_alias_ok.sum()), len(runs)),
        "top1_alias_accuracy_renamed_runs": _rate(
            int(run_alias_ok[renamed].sum()), int(renamed.sum())
        ),
        "masquerade_alert_rate_renamed_benign_runs": _rate(
            int(run_masquerade[benign_renamed].sum()), int(benign_renamed.sum())
        ),
        "masquerade_false_alert_rate_runs": _rate(
            int(run_masquerade[benign_plain].sum()), int(benign_plain.sum())
        ),
        "top1_accuracy_rows": _rate(int((predicted == split.labels).sum()), len(split)),
        "confident_0_95_correct_renamed_runs": _rate(
            int((run_ok & renamed & (confidence[last] >= 0.95)).sum()),
            int(renamed.sum()),
        ),
        "unknown_label_runs": int((run_true == unknown).sum()),
        "per_class_accuracy_runs": per_class,
        "confusion_runs": confusion.tolist(),
        "malicious_threshold": threshold,
        "malicious_roc_auc_rows": auc,
        "malicious_runs": int(run_mal.sum()),
        "miner_recall_runs": _rate(
            int((run_alert & run_mal).sum()), int(run_mal.sum())
        ),
        "false_positive_rate_runs": _rate(
            int((run_alert & ~run_mal).sum()), int((~run_mal).sum())
        ),
        "malicious_recall_rows": _rate(
            int((row_alert & row_mal).sum()), int(row_mal.sum())
        ),
        "false_positive_rate_rows": _rate(
            int((row_alert & ~row_mal).sum()), int((~row_mal).sum())
        ),
        "max_malicious_benign_rows": (
            round(float(malicious[~row_mal].max()), 4) if (~row_mal).any() else None
        ),
        "errors_runs": sorted(
            {
                f"{classes[t]}->{classes[p]}"
                for t, p in zip(run_true[~run_ok], run_pred[~run_ok], strict=True)
            }
        ),
    }


def score_split(model: LocalModel, split: Split) -> dict[str, Any]:
    """Run the model's signature on a split and compute ``split_metrics``."""
    probs, mal = model.predict_arrays(split.features)
    return split_metrics(model.classes, split, probs, mal, model.malicious_threshold)


def evaluate(
    model_dir: Path,
    corpus_dir: Path,
    *,
    report_path: Path | None = None,
) -> dict[str, Any]:
    """Score a model on the corpus's held-out (test) runs only.

    Args:
        model_dir: a version folder, or ``<base>/<name>`` for the newest version.
        corpus_dir: the lab corpus (with ``manifest.json``).
        report_path: where to write a Markdown report; none when None.

    Returns:
        The metrics of ``split_metrics`` plus ``model``, ``corpus_sha256``.

    Raises:
        ModelError: no model at ``model_dir``.
        FileNotFoundError: no corpus manifest.
    """
    model = LocalModel(model_dir)
    digest = corpus_hash(corpus_dir)
    runs = extract_runs(corpus_dir, load_runs(corpus_dir, split="test"))
    split = build_split(runs, model.classes)
    metrics = score_split(model, split) | {
        "model": str(model.path),
        "model_version": model.version,
        "corpus_sha256": digest,
        "test_labels": sorted(set(split.label_names.tolist())),
    }
    log.info(
        "evaluation_done",
        runs=metrics["runs"],
        top1_accuracy_runs=metrics["top1_accuracy_runs"],
        miner_recall_runs=metrics["miner_recall_runs"],
        false_positive_rate_runs=metrics["false_positive_rate_runs"],
    )
    if report_path is not None:
        write_report(metrics, model.classes, Path(report_path))
    return metrics


def write_report(metrics: dict[str, Any], classes: tuple[str, ...], path: Path) -> Path:
    """Write the metrics as a short Markdown report; return its path."""
    confusion = np.array(metrics["confusion_runs"])
    shown = [
        i for i in range(len(classes)) if confusion[i].sum() or confusion[:, i].sum()
    ]
    lines = [
        "# Systerns model evaluation",
        "",
        f"- model: `{metrics.get('model', '?')}` "
        f"(version {metrics.get('model_version')})",
        f"- corpus manifest sha256: `{metrics.get('corpus_sha256', '?')}`",
        f"- written: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
        "## Data and split",
        "",
        "Test split only: runs the manifest marks `test`, none of which was trained",
        "on (the split is by run, so no run has rows on both sides). Each run was",
        "replayed through the sessionizer; its main process's judgements (running",
        "snapshots and the final one) are the rows. Commands never trained on count",
        f"as `{UNKNOWN}`.",
        "",
        "Run figures use each run's final judgement for the command and any",
        "judgement for alerts. Alias-aware accuracy accepts a name that",
        "`core.verdicts.names_match` accepts (the hash tools answer for each",
        "other); masquerade figures replay `core.verdicts.reasons_for` with the",
        "name each process showed and the default verdict policy.",
        "",
        f"- runs: {metrics['runs']} ({metrics['renamed_runs']} renamed, "
        f"{metrics['malicious_runs']} malicious); rows: {metrics['rows']}",
        f"- labels: {', '.join(metrics.get('test_labels', []))}",
        "",
        "## Figures",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    for key in (
        "top1_accuracy_runs",
        "top1_accuracy_renamed_runs",
        "top1_alias_accuracy_runs",
        "top1_alias_accuracy_renamed_runs",
        "masquerade_alert_rate_renamed_benign_runs",
        "masquerade_false_alert_rate_runs",
        "confident_0_95_correct_renamed_runs",
        "top1_accuracy_rows",
        "malicious_threshold",
        "miner_recall_runs",
        "false_positive_rate_runs",
        "malicious_roc_auc_rows",
        "malicious_recall_rows",
        "false_positive_rate_rows",
        "max_malicious_benign_rows",
    ):
        lines.append(f"| {key} | {metrics[key]} |")
    lines += [
        "",
        "## Per-class accuracy (runs)",
        "",
        "| class | accuracy |",
        "| --- | --- |",
    ]
    lines += [f"| {c} | {a} |" for c, a in metrics["per_class_accuracy_runs"].items()]
    lines += [
        "",
        "## Confusion matrix (runs; rows: true, columns: predicted)",
        "",
        "| true \\ predicted | " + " | ".join(classes[i] for i in shown) + " |",
        "| --- |" + " --- |" * len(shown),
    ]
    for i in shown:
        cells = " | ".join(
            str(confusion[i, j]) if confusion[i, j] else "." for j in shown
        )
        lines.append(f"| {classes[i]} | {cells} |")
    if metrics["errors_runs"]:
        lines += [
            "",
            "Misread runs (true->predicted): " + ", ".join(metrics["errors_runs"]),
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def score_captures(model_dir: Path, captures: list[Path]) -> dict[str, Any]:
    """Judge every session of sysdig capture files as the worker would.

    Each capture is read with ``producers.sysdig``, sessionized with the default
    policy and judged by ``core.detector.Detector`` right after each batch (so
    running snapshots are scored as they happen), with the model's threshold.

    Args:
        model_dir: a version folder, or ``<base>/<name>`` for the newest version.
        captures: ``.scap`` files; unreadable ones are reported, not raised.

    Returns:
        ``max_malicious``, ``alerts`` (by reason) and, per capture, its judged
        sessions (name, trigger, events, behaves_like, confidence, malicious).
    """
    from systerns.core.detector import Detector
    from systerns.core.errors import SourceError
    from systerns.core.events import EventBatch
    from systerns.core.sessions import Sessionizer
    from systerns.producers.sysdig import read_capture

    model = LocalModel(model_dir)
    detector = Detector(
        model, policy=VerdictPolicy(malicious_threshold=model.malicious_threshold)
    )
    per_capture: dict[str, Any] = {}
    alerts: dict[str, int] = {}
    max_malicious = 0.0
    for scap in captures:
        sessionizer = Sessionizer({})
        judged: list[dict[str, Any]] = []

        def judge(judgements: list, judged: list[dict[str, Any]] = judged) -> None:
            for j, outcome in zip(judgements, detector.judge(judgements), strict=True):
                v = outcome.verdict
                judged.append(
                    {
                        "comm": j.session["comm"],
                        "trigger": j.trigger,
                        "n_events": j.session["n_events"],
                        "behaves_like": v["behaves_like"],
                        "confidence": round(float(v["confidence"]), 4),
                        "malicious": round(float(v["malicious_probability"]), 4),
                        "alerts": [a["reason"] for a in outcome.alerts],
                    }
                )

        error = ""
        try:
            for item in read_capture(Path(scap), "capture-check"):
                if isinstance(item, EventBatch):
                    judge(sessionizer.ingest(item))
        except SourceError as exc:
            error = str(exc)[:200]
        judge(sessionizer.flush())
        for row in judged:
            max_malicious = max(max_malicious, row["malicious"])
            for reason in row["alerts"]:
                alerts[reason] = alerts.get(reason, 0) + 1
        per_capture[Path(scap).name] = {"sessions": judged, "error": error}
    log.info(
        "captures_scored",
        captures=len(captures),
        max_malicious=max_malicious,
        alerts=alerts,
    )
    return {
        "max_malicious": max_malicious,
        "alerts": alerts,
        "malicious_threshold": model.malicious_threshold,
        "captures": per_capture,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m systerns.serving.evaluate MODEL_DIR [CORPUS_DIR] [options]``.

    Prints the held-out metrics (with a corpus) and the capture check (with
    ``--captures``) as JSON on stdout; returns the exit code.
    """
    import json

    from systerns.core.logs import configure

    configure()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("corpus_dir", type=Path, nargs="?", default=None)
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the held-out Markdown report here",
    )
    parser.add_argument(
        "--captures",
        type=Path,
        nargs="*",
        default=[],
        help="sysdig .scap files of normal activity to judge",
    )
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    if args.corpus_dir is not None:
        out["held_out"] = evaluate(
            args.model_dir, args.corpus_dir, report_path=args.report
        )
    if args.captures:
        out["captures"] = score_captures(args.model_dir, args.captures)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
