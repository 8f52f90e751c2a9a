"""Writes the evaluation report: Markdown with PNG plots (matplotlib, Agg).

Plots go to a folder beside the report named ``<report stem>_plots``: the
model's confusion matrix, accuracy per command (model and baselines), ROC and
precision-recall curves of the malicious output per session.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from systerns.serving.dataset import UNKNOWN, Split

#: Figures of the side-by-side table, in order, with their label.
COMPARED: tuple[tuple[str, str], ...] = (
    ("top1_accuracy_runs", "command top-1, exact (runs)"),
    ("top1_accuracy_renamed_runs", "command top-1, exact, renamed runs"),
    ("top1_hash_merged_accuracy_runs", "command top-1, hash family merged"),
    ("top1_hash_merged_accuracy_renamed_runs", "same, renamed runs"),
    ("top1_alias_accuracy_runs", "command top-1, alias-aware"),
    ("miner_recall_runs", "miner recall (sessions)"),
    ("false_positive_rate_runs", "false positive rate (benign test sessions)"),
    ("malicious_roc_auc_rows", "ROC AUC, malicious (judgements)"),
    ("masquerade_alert_rate_renamed_benign_runs", "masquerade alerts, renamed"),
    ("masquerade_false_alert_rate_runs", "masquerade alerts, honest names"),
)


def _plots(
    metrics: dict[str, Any],
    classes: tuple[str, ...],
    folder: Path,
    split: Split | None,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from systerns.serving.evaluate import session_level

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    confusion = np.array(metrics["confusion_runs"])
    shown = [
        i for i in range(len(classes)) if confusion[i].sum() or confusion[:, i].sum()
    ]
    fig, ax = plt.subplots(figsize=(11, 10))
    ax.imshow(confusion[np.ix_(shown, shown)], cmap="Blues")
    ax.set_xticks(range(len(shown)), [classes[i] for i in shown], rotation=90)
    ax.set_yticks(range(len(shown)), [classes[i] for i in shown])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix, held-out runs (model)")
    for a, i in enumerate(shown):
        for b, j in enumerate(shown):
            if confusion[i, j]:
                ax.text(b, a, str(confusion[i, j]), ha="center", va="center", size=7)
    fig.tight_layout()
    fig.savefig(folder / "confusion.png", dpi=90)
    plt.close(fig)
    made["confusion"] = "confusion.png"

    per = {"model": metrics["per_class_accuracy_runs"]}
    for name, m in metrics.get("baselines", {}).items():
        per[name] = m["per_class_accuracy_runs"]
    labels = sorted(per["model"])
    fig, ax = plt.subplots(figsize=(9, max(4, 0.22 * len(labels) * len(per))))
    height = 0.8 / len(per)
    for k, (name, acc) in enumerate(per.items()):
        ax.barh(
            np.arange(len(labels)) + k * height,
            [acc.get(c) or 0.0 for c in labels],
            height=height,
            label=name,
        )
    ax.set_yticks(np.arange(len(labels)) + 0.4 - height / 2, labels, size=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 accuracy (held-out runs)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "accuracy_per_command.png", dpi=90)
    plt.close(fig)
    made["accuracy"] = "accuracy_per_command.png"

    if split is not None and len(split):
        curves = {}
        for name, (_, mal) in outputs.items():
            _, truth, score = session_level(split, mal)
            if truth.any() and (~truth).any():
                curves[name] = (truth, score)
        if curves:
            for kind in ("roc", "pr"):
                fig, ax = plt.subplots(figsize=(5.5, 5))
                for name, (truth, score) in curves.items():
                    if kind == "roc":
                        x, y, _ = roc_curve(truth, score)
                    else:
                        y, x, _ = precision_recall_curve(truth, score)
                    ax.plot(x, y, label=name, drawstyle="steps-post")
                thr = metrics["malicious_threshold"]
                op = metrics["session_at_model_threshold"]
                if kind == "roc":
                    ax.plot(
                        op["false_positive_rate"] or 0.0,
                        op["recall"] or 0.0,
                        "ko",
                        label=f"model at threshold {thr}",
                    )
                    ax.set_xlabel("false positive rate")
                    ax.set_ylabel("miner recall")
                else:
                    ax.set_xlabel("recall")
                    ax.set_ylabel("precision")
                ax.set_xlim(-0.02, 1.02)
                ax.set_ylim(-0.02, 1.02)
                ax.set_title(f"malicious output per session ({kind.upper()})")
                ax.legend(loc="lower right" if kind == "roc" else "lower left")
                fig.tight_layout()
                fig.savefig(folder / f"malicious_{kind}.png", dpi=90)
                plt.close(fig)
                made[kind] = f"malicious_{kind}.png"
    return made


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def write_full_report(
    metrics: dict[str, Any],
    classes: tuple[str, ...],
    path: Path,
    *,
    split: Split | None = None,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Write the Markdown report and its plots; return the report's path.

    Args:
        metrics: what ``serving.evaluate.evaluate`` returns.
        classes: the model's classes in output order.
        path: the report file.
        split: the scored test rows (for the ROC and PR plots).
        outputs: per detector (``model``, ``name_rule``, ``ngram``), its
            ``(command_probs, malicious)`` on ``split``.
    """
    path = Path(path)
    folder = path.parent / f"{path.stem}_plots"
    plots = _plots(metrics, classes, folder, split, outputs or {})
    rel = folder.name
    base = metrics.get("baselines", {})
    thr = metrics["malicious_threshold"]
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
        f"The lab corpus ({metrics.get('corpus_runs')} recorded runs) is split by"
        " run in its manifest: no run has judgements on both sides. The model and"
        f" the n-gram baseline learnt from the {metrics.get('train_runs_in_corpus')}"
        f" `train` runs; every figure below comes from the {metrics['runs']} `test`"
        f" runs ({metrics['renamed_runs']} renamed, {metrics['malicious_runs']}"
        " miner runs), the held-out attack family (split `heldout`,"
        f" {metrics.get('held_out_family_runs_in_corpus')} runs, never trained on by"
        " anything), and real sysdig captures of normal activity.",
        "",
        "Each run is replayed through the sessionizer as the worker would see it;"
        " the judgements of its main process (running snapshots every 5 s after"
        f" the first at 3 s, and the final one) are the {metrics['rows']} rows."
        " A run's command answer is its last final judgement; it alerts when any"
        " judgement does (sessions are the unit of the miner figures).",
        "",
        f"- test labels: {', '.join(metrics.get('test_labels', []))}",
        "",
        "## Side by side",
        "",
        "The name rule answers the name the process shows, and alerts on a known"
        " miner name or pool/stratum string in the name or command line. The"
        " n-gram baseline is two logistic regressions on TF-IDF weighted syscall"
        " 1-3-grams of the same session prefix the model saw; it alerts at 0.5."
        f" The model alerts at its stored threshold {thr}.",
        "",
        "| figure | model | n-gram LR | name rule |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in COMPARED:
        row = [metrics.get(key)] + [
            base.get(b, {}).get(key) for b in ("ngram", "name_rule")
        ]
        lines.append(f"| {label} | " + " | ".join(_cell(v) for v in row) + " |")
    fam = metrics.get("held_out_family", {})
    caps = metrics.get("captures", {})
    cap_base = metrics.get("captures_baselines", {})
    lines.append(
        "| held-out family, any alert | "
        f"{fam.get('any_alert_within_10s_runs', 'n/a')}/{fam.get('runs', 0)}"
        " within 10 s | - | - |"
    )
    lines.append(
        "| held-out family runs flagged (p) | "
        f"{fam.get('flagged_runs', 'n/a')}/{fam.get('runs', 0)} | "
        f"{_cell(fam.get('ngram_flagged_runs'))}/{fam.get('runs', 0)} | "
        f"{fam.get('name_rule_flagged_runs', 'n/a')}/{fam.get('runs', 0)} |"
    )
    if caps:
        lines.append(
            "| alerts on real normal captures | "
            f"{sum(caps.get('alerts', {}).values())} | "
            f"{cap_base.get('ngram_alerts', 'n/a')} | "
            f"{cap_base.get('name_rule_alerts', 'n/a')} |"
        )
    merged = metrics.get("captures_merged", {})
    if merged:
        lines.append(
            "| alerts on the captures as one host's stream (demo) | "
            f"{sum(merged.get('alerts', {}).values())} | - | - |"
        )

    op = metrics["session_at_model_threshold"]
    lines += [
        "",
        "## Malicious output and threshold",
        "",
        f"Chosen threshold: **{thr}** (stored in the model, the verdict policy's"
        f" default). At it, per session: recall {_cell(op['recall'])},"
        f" false positive rate {_cell(op['false_positive_rate'])}"
        f" ({op['false_positives']} of {op['negatives']} benign sessions,"
        f" {op['positives']} miner sessions). The lowest threshold keeping the"
        " test split's false positive rate at or under 0.1% is"
        f" {metrics['session_threshold_fpr_0_001']:.4g}. With"
        f" {op['negatives']} benign test sessions, 0 false positives bounds the"
        f" rate only below about {3 / max(op['negatives'], 1):.1%} (95%, rule of"
        " three); showing 0.1% needs about 3,000 benign sessions without an alert.",
        "",
        f"- ROC AUC over all judgements: {_cell(metrics['malicious_roc_auc_rows'])};"
        f" highest malicious probability on a benign judgement:"
        f" {_cell(metrics['max_malicious_benign_rows'])}",
    ]
    for name in ("roc", "pr"):
        if name in plots:
            lines.append(f"\n![{name}]({rel}/{plots[name]})")

    blind = metrics.get("without_cpu_readings")
    if blind:
        bop = blind["session_at_model_threshold"]
        caught = ", ".join(f"{label} {hit}/{n}" for label, (hit, n)
                           in sorted(blind["miners_caught_by_label"].items()))
        lines += [
            "",
            "## Without CPU readings",
            "",
            "The same test rows with the CPU block zeroed, as a source without"
            " `/proc` readings (a capture file read after the fact) shows them:"
            f" command top-1 {_cell(blind['top1_accuracy_runs'])} (hash merged"
            f" {_cell(blind['top1_hash_merged_accuracy_runs'])}); per session,"
            f" recall {_cell(bop['recall'])} and false positive rate"
            f" {_cell(bop['false_positive_rate'])} ({bop['false_positives']} of"
            f" {bop['negatives']} benign). Miners caught per implementation: {caught}.",
        ]

    tta = metrics.get("miner_time_to_alert_s", {})
    lines += [
        "",
        "## Time to first verdict for a running miner",
        "",
        "Seconds from the miner's `execve` to its first alerting judgement (test"
        " runs; the worker first judges a session 3 s after it starts, then"
        " every 5 s).",
        "",
        "| run | model | n-gram LR | name rule |",
        "| --- | --- | --- | --- |",
    ]
    for run_id, s in tta.items():
        row = [s] + [
            base.get(b, {}).get("miner_time_to_alert_s", {}).get(run_id)
            for b in ("ngram", "name_rule")
        ]
        lines.append(f"| {run_id} | " + " | ".join(_cell(v) for v in row) + " |")

    lines += ["", "## Held-out attack family", ""]
    if fam.get("runs"):
        lines += [
            "Every session of each run (dropper shell, downloader, killer,"
            " payload) is judged; none of these runs, nor anything like the"
            " payload's miner, was trained on. Time counts from the dropper's"
            " first event.",
            "",
            f"- crypto_mining (p >= threshold): {fam['flagged_runs']}/{fam['runs']}"
            f" runs; with p >= 0.9 within 10 s: {fam['flagged_p_0_9_within_10s_runs']}"
            f"/{fam['runs']}",
            f"- masquerading (a renamed program recognised):"
            f" {fam['masquerade_flagged_runs']}/{fam['runs']} runs; any model alert"
            f" within 10 s: {fam['any_alert_within_10s_runs']}/{fam['runs']}",
            "",
            "| run | shown name | max p | session | behaves like | first p alert s"
            " | masquerading | first any alert s | n-gram first alert s | name rule |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in fam["per_run"]:
            lines.append(
                f"| {r['run_id']} | {r['shown_name']} | {r['max_malicious']}"
                f" | {r['max_malicious_comm']} | {r['max_malicious_behaves_like']}"
                f" | {_cell(r['first_alert_s'])}"
                f" | {'alert' if r['masquerade_flagged'] else '-'}"
                f" | {_cell(r['first_any_alert_s'])}"
                f" | {_cell(r['ngram_first_alert_s'])}"
                f" | {'alert' if r['name_rule_flagged'] else '-'} |"
            )
    else:
        lines.append("This corpus has no held-out attack family.")

    unseen = metrics.get("excluded_label_runs", {})
    if unseen.get("runs"):
        lines += [
            "",
            "## Labels left out of training",
            "",
            f"The model was trained without {', '.join(metrics['excluded_labels'])}"
            " (its metadata lists them); the n-gram baseline learnt without them"
            " too, and the figures above leave their test runs out. All their"
            " runs, train and test split alike (the model saw none), are judged"
            " here, session by session, like the held-out family.",
            "",
            f"- crypto_mining (p >= threshold): {unseen['flagged_runs']}/{unseen['runs']}"
            f" runs; with p >= 0.9 within 10 s: {unseen['flagged_p_0_9_within_10s_runs']}"
            f"/{unseen['runs']}; n-gram LR: {_cell(unseen['ngram_flagged_runs'])}"
            f"/{unseen['runs']}; name rule: {unseen['name_rule_flagged_runs']}"
            f"/{unseen['runs']}",
            "",
            "| run | shown name | max p | behaves like | first p alert s |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['run_id']} | {r['shown_name']} | {r['max_malicious']}"
            f" | {r['max_malicious_behaves_like']} | {_cell(r['first_alert_s'])} |"
            for r in unseen["per_run"]
        ]

    if caps:
        lines += [
            "",
            "## Real normal captures (sysdig)",
            "",
            "Each file of `/work/shared/data/scap` is read with"
            " `producers.sysdig.read_capture`, sessionized and judged as the worker"
            " would (model alerts include masquerading).",
            "",
            "| capture | judgements | model alerts | max p | n-gram alerts"
            " | name-rule alerts | read error |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in caps["captures"].items():
            sessions = c["sessions"]
            b = cap_base.get("captures", {}).get(name, {})
            lines.append(
                f"| {name} | {len(sessions)}"
                f" | {sum(len(s['alerts']) for s in sessions)}"
                f" | {max((s['malicious'] for s in sessions), default=0.0):.4f}"
                f" | {b.get('ngram_alerts', 'n/a')}"
                f" | {b.get('name_rule_alerts', 'n/a')}"
                f" | {(c['error'][:60] + '...') if c['error'] else ''} |"
            )
        merged = metrics.get("captures_merged", {})
        for name, c in merged.get("captures", {}).items():
            sessions = c["sessions"]
            top = max(sessions, key=lambda s: s["malicious"], default=None)
            lines += [
                "",
                f"All captures again, in this order, as one host's stream ({name}):"
                " what the worker sees when one collector publishes them, as in"
                " the demo. A process seen in several captures of one machine"
                " (`dockerd` in `example4-1` and `example4-2`) is one session,"
                " judged while it runs. This is the check a model must pass"
                " before it is served.",
                "",
                f"Judgements: {len(sessions)}; model alerts:"
                f" {sum(len(s['alerts']) for s in sessions)}"
                f" ({merged.get('alerts', {}) or 'none'}); highest malicious p:"
                + (f" {top['malicious']:.4f} (`{top['comm']}`, {top['n_events']}"
                   f" events, {top['trigger']}, behaves like"
                   f" `{top['behaves_like']}`)." if top else " n/a."),
            ]

    lines += [
        "",
        "## Accuracy per command",
        "",
        f"![accuracy per command]({rel}/{plots['accuracy']})",
        "",
        "| class | model | n-gram LR | name rule |",
        "| --- | --- | --- | --- |",
    ]
    for c, a in metrics["per_class_accuracy_runs"].items():
        row = [a] + [
            base.get(b, {}).get("per_class_accuracy_runs", {}).get(c)
            for b in ("ngram", "name_rule")
        ]
        lines.append(f"| {c} | " + " | ".join(_cell(v) for v in row) + " |")

    lines += [
        "",
        "## Confusion matrix (runs; rows: true, columns: predicted)",
        "",
        f"![confusion matrix]({rel}/{plots['confusion']})",
        "",
    ]
    if metrics["errors_runs"]:
        lines.append(
            "Misread runs (true->predicted): " + ", ".join(metrics["errors_runs"])
        )
    if metrics.get("unknown_label_runs"):
        lines.append(
            f"\n{metrics['unknown_label_runs']} test runs are of commands never"
            f" trained on (expected answer `{UNKNOWN}`)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
