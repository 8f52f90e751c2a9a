"""Held-out evaluation of an exported model on the corpus test split.

Figures are given twice: per run (the final judgement of the run's main session
for the command; any judgement over the threshold for an alert) and per row (every
judgement, running snapshots included). Runs are the honest unit: rows of one run
are strongly alike, and the worker alerts once per session.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from systerns.core.events import CPU_EVENT
from systerns.core.features import OFFSETS
from systerns.core.syscalls import VOCAB_INDEX
from systerns.core.verdicts import ModelAnswer, VerdictPolicy, names_match, reasons_for
from systerns.serving.baselines import (
    NgramBaseline,
    main_sequences,
    name_rule_is_miner,
    name_rule_outputs,
    row_documents,
)
from systerns.serving.client import LocalModel
from systerns.serving.dataset import (
    HELD_OUT,
    UNKNOWN,
    Split,
    build_split,
    corpus_hash,
    extract_runs,
    load_runs,
)

log = structlog.get_logger(__name__)

#: Checksum tools whose syscalls are the same (read a file, write a line): the
#: hash family is scored merged as well as exactly.
HASH_FAMILY: frozenset[str] = frozenset(
    {"md5sum", "sha1sum", "sha256sum", "sha512sum", "b2sum", "cksum"}
)
HASH_CLASS = "hash"


def merge_hash(name: str) -> str:
    """A class name with the hash tools merged into one ``hash`` class."""
    return HASH_CLASS if name in HASH_FAMILY else name


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _run_index(split: Split) -> list[np.ndarray]:
    """Row indices of each run, runs in first-seen order."""
    _, first, inverse = np.unique(split.run_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    return [np.flatnonzero(inverse == k) for k in order]


#: Column saying a session holds an ``execve`` (``syscall_seen`` block).
_EXECVE_SEEN = OFFSETS["syscall_seen"] + VOCAB_INDEX["execve"]


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
    top3 = (
        np.argsort(-command_probs, axis=1, kind="stable")[:, :3]
        if len(split)
        else np.zeros((0, 3), int)
    )
    row_masquerade = np.array(
        [
            "masquerading"
            in reasons_for(
                {"n_events": int(n_ev), "comm": str(shown), "exe": str(shown),
                 "counts": {"execve": int(ex)}},
                ModelAnswer(
                    classes[p],
                    float(c),
                    float(m),
                    0,
                    tuple((classes[k], float(row[k])) for k in ranked),
                ),
                policy,
            )
            for n_ev, shown, ex, p, c, m, row, ranked in zip(
                split.n_events,
                split.shown_names,
                # The row's session holds its image's execve (not a mid-life view).
                split.features[:, _EXECVE_SEEN] > 0,
                predicted,
                confidence,
                malicious,
                command_probs,
                top3,
                strict=True,
            )
        ],
        dtype=bool,
    )
    run_masquerade = np.array([bool(row_masquerade[idx].any()) for idx in runs])
    run_merged_ok = np.array(
        [
            merge_hash(classes[t]) == merge_hash(classes[p])
            for t, p in zip(run_true, run_pred, strict=True)
        ],
        dtype=bool,
    )
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
        "top1_hash_merged_accuracy_runs": _rate(int(run_merged_ok.sum()), len(runs)),
        "top1_hash_merged_accuracy_renamed_runs": _rate(
            int(run_merged_ok[renamed].sum()), int(renamed.sum())
        ),
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


def session_level(
    split: Split, malicious: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per run (one main session each): run ids, truth, and highest score.

    A session alerts when any of its judgements does, so its score is the
    maximum malicious probability over its rows.
    """
    runs = _run_index(split)
    ids = np.array([split.run_ids[idx[0]] for idx in runs], dtype=object)
    truth = np.array([split.malicious[idx[0]] > 0.5 for idx in runs], dtype=bool)
    score = np.array(
        [float(np.max(malicious[idx])) if len(idx) else 0.0 for idx in runs]
    )
    return ids, truth, score


def operating_point(
    truth: np.ndarray, score: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Recall, false positive rate and counts at one threshold."""
    alert = score >= threshold
    pos, neg = int(truth.sum()), int((~truth).sum())
    return {
        "threshold": round(float(threshold), 4),
        "recall": _rate(int((alert & truth).sum()), pos),
        "false_positive_rate": _rate(int((alert & ~truth).sum()), neg),
        "false_positives": int((alert & ~truth).sum()),
        "positives": pos,
        "negatives": neg,
    }


def threshold_for_fpr(truth: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold whose false positive rate stays at or under ``max_fpr``.

    With ``n`` negatives, ``max_fpr * n`` of them may score at or above it; the
    threshold sits just above the first negative score that would break that.
    """
    neg = np.sort(score[~truth])[::-1]
    allowed = int(np.floor(max_fpr * len(neg)))
    if len(neg) == 0 or allowed >= len(neg):
        return 0.0
    return float(np.nextafter(np.float32(neg[allowed]), np.float32(2.0)))


def time_to_alert(
    split: Split, malicious: np.ndarray, threshold: float
) -> dict[str, float | None]:
    """Seconds from each malicious run's start to its first alerting judgement.

    Returns:
        run id -> seconds (None when the run never alerted).
    """
    out: dict[str, float | None] = {}
    elapsed = (
        split.elapsed_s if split.elapsed_s is not None else np.full(len(split), np.nan)
    )
    for idx in _run_index(split):
        if split.malicious[idx[0]] <= 0.5:
            continue
        hits = idx[malicious[idx] >= threshold]
        first = float(np.min(elapsed[hits])) if len(hits) else None
        out[str(split.run_ids[idx[0]])] = (
            None if first is None or np.isnan(first) else round(first, 2)
        )
    return out


def replay_sessions(
    batches: Any, chunk_events: int = 32
) -> list[tuple[dict, str, list[str]]]:
    """Judge every session of a stream of batches as the worker would.

    Args:
        batches: ``EventBatch`` items (anything else is skipped).
        chunk_events: events per slice fed to the sessionizer.

    Returns:
        Per judgement: the session state, its trigger, and the syscalls that
        session had seen (for the n-gram baseline).
    """
    from systerns.core.events import EventBatch
    from systerns.core.sessions import Sessionizer
    from systerns.lab.corpus import _copy_state

    sz = Sessionizer({})
    seen: dict[int, list[str]] = {}
    out: list[tuple[dict, str, list[str]]] = []

    def keep(judgements: list) -> None:
        for j in judgements:
            names = seen.get(int(j.session["pid"]), [])
            n = int(j.session["n_events"])
            out.append((_copy_state(j.session), j.trigger, names[-n:] if n else []))

    for batch in batches:
        if not isinstance(batch, EventBatch):
            continue
        for i in range(0, len(batch.events), chunk_events):
            part = EventBatch(
                batch.process, batch.events[i : i + chunk_events], batch.source
            )
            seen.setdefault(batch.process.pid, []).extend(
                e.name for e in part.events if e.name != CPU_EVENT)  # syscalls only
            keep(sz.ingest(part))
    keep(sz.flush())
    return out


def score_sessions(
    model: LocalModel,
    judged: list[tuple[dict, str, list[str]]],
    ngram: NgramBaseline | None,
) -> list[dict[str, Any]]:
    """The model's and the baselines' answers on replayed judgements."""
    from systerns.core.features import vectorize_many

    if not judged:
        return []
    probs, mal = model.predict_arrays(vectorize_many([j[0] for j in judged]))
    if ngram is not None:
        ng_probs, ng_mal = ngram.predict([j[2] for j in judged])
    policy = VerdictPolicy(malicious_threshold=model.malicious_threshold)
    rows = []
    for k, (session, trigger, _) in enumerate(judged):
        top = int(np.argmax(probs[k]))
        ranked = np.argsort(-probs[k], kind="stable")[:3]
        answer = ModelAnswer(
            model.classes[top],
            float(probs[k, top]),
            float(mal[k]),
            model.version,
            tuple((model.classes[i], float(probs[k, i])) for i in ranked),
        )
        row = {
            "pid": int(session["pid"]),
            "comm": str(session["comm"]),
            "cmdline": str(session.get("cmdline", "")),
            "trigger": trigger,
            "n_events": int(session["n_events"]),
            "first_ts_ns": int(session["first_ts_ns"]),
            "last_ts_ns": int(session["last_ts_ns"]),
            "behaves_like": model.classes[top],
            "confidence": round(float(probs[k, top]), 4),
            "malicious": round(float(mal[k]), 4),
            "reasons": reasons_for(session, answer, policy),
            "name_rule": name_rule_is_miner(
                str(session["comm"]), str(session.get("cmdline", ""))
            ),
        }
        if ngram is not None:
            row["ngram_malicious"] = round(float(ng_mal[k]), 4)
            row["ngram_behaves_like"] = ngram.classes[int(np.argmax(ng_probs[k]))]
        rows.append(row)
    return rows


def score_held_out_family(
    model: LocalModel, runs: list[dict[str, Any]], ngram: NgramBaseline | None
) -> dict[str, Any]:
    """Judge every session of each held-out attack run (dropper, payload, helpers).

    A run is flagged when any of its sessions reaches the threshold; time to the
    first verdict counts from the run's first event (the dropper's start).
    """
    threshold = model.malicious_threshold
    per_run = []
    for run in runs:
        judged = replay_sessions(run["batches"])
        rows = score_sessions(model, judged, ngram)
        start = min((e.ts_ns for b in run["batches"] for e in b.events[:1]), default=0)

        def first(
            hit: Any, rows: list[dict[str, Any]] = rows, start: int = start
        ) -> float | None:
            times = [(r["last_ts_ns"] - start) / 1e9 for r in rows if hit(r)]
            return round(min(times), 2) if times else None

        best = max(rows, key=lambda r: r["malicious"], default=None)
        per_run.append(
            {
                "run_id": run["run_id"],
                "shown_name": run.get("shown_name", ""),
                "sessions": len({r["pid"] for r in rows}),
                "max_malicious": best["malicious"] if best else 0.0,
                "max_malicious_comm": best["comm"] if best else "",
                "max_malicious_behaves_like": best["behaves_like"] if best else "",
                "flagged": any(r["malicious"] >= threshold for r in rows),
                "first_alert_s": first(lambda r: r["malicious"] >= threshold),
                "first_p_0_9_s": first(lambda r: r["malicious"] >= 0.9),
                "masquerade_flagged": any("masquerading" in r["reasons"] for r in rows),
                "first_any_alert_s": first(lambda r: bool(r["reasons"])),
                "name_rule_flagged": any(r["name_rule"] for r in rows),
                "ngram_flagged": (
                    any(r.get("ngram_malicious", 0.0) >= ngram.threshold for r in rows)
                    if ngram is not None
                    else None
                ),
                "ngram_first_alert_s": (
                    first(lambda r: r.get("ngram_malicious", 0.0) >= ngram.threshold)
                    if ngram is not None
                    else None
                ),
            }
        )
    n = len(per_run)
    fast = [r for r in per_run if r["first_p_0_9_s"] is not None]
    return {
        "runs": n,
        "flagged_runs": sum(r["flagged"] for r in per_run),
        "flagged_p_0_9_within_10s_runs": sum(r["first_p_0_9_s"] <= 10.0 for r in fast),
        "masquerade_flagged_runs": sum(r["masquerade_flagged"] for r in per_run),
        "any_alert_within_10s_runs": sum(
            r["first_any_alert_s"] is not None and r["first_any_alert_s"] <= 10.0
            for r in per_run
        ),
        "name_rule_flagged_runs": sum(r["name_rule_flagged"] for r in per_run),
        "ngram_flagged_runs": (
            sum(bool(r["ngram_flagged"]) for r in per_run) if ngram else None
        ),
        "per_run": per_run,
    }


def score_captures_baselines(
    captures: list[Path], ngram: NgramBaseline | None
) -> dict[str, Any]:
    """Alerts the two baselines raise on sysdig captures of normal activity."""
    from systerns.core.errors import SourceError
    from systerns.producers.sysdig import read_capture

    per: dict[str, Any] = {}
    for scap in captures:
        batches: list[Any] = []
        try:
            batches.extend(read_capture(Path(scap), "capture-check"))
        except SourceError:
            pass
        judged = replay_sessions(batches)
        name_hits = sum(
            name_rule_is_miner(str(s["comm"]), str(s.get("cmdline", "")))
            for s, _, _ in judged
        )
        ng_hits = 0
        if ngram is not None and judged:
            _, ng_mal = ngram.predict([j[2] for j in judged])
            ng_hits = int((ng_mal >= ngram.threshold).sum())
        per[Path(scap).name] = {
            "judgements": len(judged),
            "name_rule_alerts": int(name_hits),
            "ngram_alerts": ng_hits,
        }
    return {
        "name_rule_alerts": sum(v["name_rule_alerts"] for v in per.values()),
        "ngram_alerts": sum(v["ngram_alerts"] for v in per.values()),
        "judgements": sum(v["judgements"] for v in per.values()),
        "captures": per,
    }


def default_captures() -> list[Path]:
    """Every ``.scap`` under ``../shared/data/scap`` beside the repository."""
    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scap"
    return sorted(root.resolve().rglob("*.scap")) if root.is_dir() else []


def evaluate(
    model_dir: Path,
    corpus_dir: Path,
    *,
    report_path: Path | None = None,
    captures: list[Path] | None = None,
    baselines: bool = True,
    seed: int = 7,
) -> dict[str, Any]:
    """Score a model on the corpus's held-out runs, beside two baselines.

    The test split gives the command and miner figures; runs of a held-out
    attack family (split ``heldout``) are judged session by session; captures
    of real normal activity give the false alerts. The baselines (a miner name
    rule and a logistic regression on syscall n-grams) are fitted on the train
    split and scored on the same rows.

    Args:
        model_dir: a version folder, or ``<base>/<name>`` for the newest version.
        corpus_dir: the lab corpus (with ``manifest.json``).
        report_path: where to write a Markdown report (plots in a folder beside
            it, named after it); none when None.
        captures: sysdig captures of normal activity to judge.
        baselines: fit and score the baselines.
        seed: the n-gram baseline's seed.

    Returns:
        The metrics of ``split_metrics`` plus ``model``, ``corpus_sha256`` and,
        under their own keys, the session-level, baseline, held-out family and
        capture figures.

    Raises:
        ModelError: no model at ``model_dir``.
        FileNotFoundError: no corpus manifest.
    """
    from systerns.serving.export import read_metadata

    model = LocalModel(model_dir)
    digest = corpus_hash(corpus_dir)
    all_runs = load_runs(corpus_dir)
    # Labels the model was trained without: the baselines learn without them
    # too, and their test runs are scored apart, as an implementation unseen.
    try:
        excluded = frozenset(read_metadata(model.path).get("excluded_labels") or ())
    except FileNotFoundError:
        excluded = frozenset()
    # Every run of such a label is unseen by the model, whatever its split.
    unseen_runs = [r for r in all_runs
                   if r.get("split") in ("train", "test") and r.get("label") in excluded]
    test_runs = [r for r in all_runs
                 if r.get("split") == "test" and r.get("label") not in excluded]
    train_runs = [r for r in all_runs
                  if r.get("split") == "train" and r.get("label") not in excluded]
    family_runs = [r for r in all_runs if r.get("split") == HELD_OUT]
    split = build_split(extract_runs(corpus_dir, test_runs), model.classes)
    threshold = model.malicious_threshold
    probs, mal = model.predict_arrays(split.features)
    metrics = split_metrics(model.classes, split, probs, mal, threshold) | {
        "model": str(model.path),
        "model_version": model.version,
        "corpus_sha256": digest,
        "test_labels": sorted(set(split.label_names.tolist())),
        "corpus_runs": len(all_runs),
        "train_runs_in_corpus": len(train_runs),
        "held_out_family_runs_in_corpus": len(family_runs),
        "excluded_labels": sorted(excluded),
    }
    _, truth, score = session_level(split, mal)
    metrics["session_threshold_fpr_0_001"] = threshold_for_fpr(truth, score, 0.001)
    metrics["session_at_model_threshold"] = operating_point(truth, score, threshold)
    metrics["miner_time_to_alert_s"] = time_to_alert(split, mal, threshold)

    blind = without_cpu(model, split)
    if blind is not None:
        metrics["without_cpu_readings"] = blind

    ngram = None
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {"model": (probs, mal)}
    if baselines:
        ngram, outputs = _fit_baselines(
            corpus_dir, model, train_runs, test_runs, split, seed, outputs
        )
        metrics["baselines"] = {}
        for name in ("name_rule", "ngram"):
            b_probs, b_mal = outputs[name]
            b_thr = 0.5
            m = split_metrics(model.classes, split, b_probs, b_mal, b_thr)
            _, _, b_score = session_level(split, b_mal)
            m["session_at_threshold"] = operating_point(truth, b_score, b_thr)
            m["miner_time_to_alert_s"] = time_to_alert(split, b_mal, b_thr)
            metrics["baselines"][name] = m
    metrics["held_out_family"] = score_held_out_family(model, family_runs, ngram)
    if unseen_runs:
        metrics["excluded_label_runs"] = score_held_out_family(model, unseen_runs, ngram)
    if captures:
        metrics["captures"] = score_captures(model, captures)
        metrics["captures_merged"] = score_captures(model, captures, merged=True)
        metrics["captures_baselines"] = score_captures_baselines(captures, ngram)
    log.info(
        "evaluation_done",
        runs=metrics["runs"],
        top1_accuracy_runs=metrics["top1_accuracy_runs"],
        miner_recall_runs=metrics["miner_recall_runs"],
        false_positive_rate_runs=metrics["false_positive_rate_runs"],
        held_out_family_flagged=metrics["held_out_family"]["flagged_runs"],
    )
    if report_path is not None:
        from systerns.serving.report import write_full_report

        write_full_report(
            metrics, model.classes, Path(report_path), split=split, outputs=outputs
        )
    return metrics


def without_cpu(model: LocalModel, split: Split) -> dict[str, Any] | None:
    """The test split scored as a source without CPU readings would show it.

    A capture file read after the fact carries no ``/proc`` readings (feature
    version 3's CPU block is zero); this scores the same rows that way, per
    label too, so the report says what each miner costs without them. None for
    models older than feature version 3 (they never read the block).
    """
    start = OFFSETS.get("cpu_stats")
    if start is None or model.feature_dim <= start:
        return None
    x = split.features.copy()
    x[:, start:] = 0.0
    probs, mal = model.predict_arrays(x)
    m = split_metrics(model.classes, split, probs, mal, model.malicious_threshold)
    ids, truth, score = session_level(split, mal)
    labels = {split.run_ids[i]: split.label_names[i] for i in range(len(split))}
    per_label: dict[str, list[int]] = {}
    for run_id, t, sc in zip(ids, truth, score, strict=True):
        if t:
            hit = per_label.setdefault(str(labels[run_id]), [0, 0])
            hit[0] += int(sc >= model.malicious_threshold)
            hit[1] += 1
    return {
        "top1_accuracy_runs": m["top1_accuracy_runs"],
        "top1_hash_merged_accuracy_runs": m["top1_hash_merged_accuracy_runs"],
        "session_at_model_threshold": operating_point(
            truth, score, model.malicious_threshold),
        "miners_caught_by_label": per_label,
    }


def _fit_baselines(
    corpus_dir: Path,
    model: LocalModel,
    train_runs: list[dict[str, Any]],
    test_runs: list[dict[str, Any]],
    split: Split,
    seed: int,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[NgramBaseline | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
    argv = {str(r["run_id"]): r.get("argv") or [] for r in test_runs}
    outputs = dict(outputs)
    outputs["name_rule"] = name_rule_outputs(
        model.classes,
        split.shown_names,
        [argv.get(str(i), [])[1:] for i in split.run_ids],
    )
    train = build_split(extract_runs(corpus_dir, train_runs), model.classes)
    if not len(train):
        return None, outputs
    sequences = main_sequences(train_runs + test_runs)
    log.info("ngram_baseline_fitting", train_rows=len(train), test_rows=len(split))
    ngram = NgramBaseline(model.classes, seed=seed).fit(
        row_documents(train, sequences), train.labels, train.malicious
    )
    outputs["ngram"] = ngram.predict(row_documents(split, sequences))
    return ngram, outputs


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without the bulky per-session and per-cell parts."""
    out = {k: v for k, v in metrics.items() if k not in ("confusion_runs",)}
    for key in ("captures", "captures_merged"):
        if key in out:
            caps = out[key]
            out[key] = {k: v for k, v in caps.items() if k != "captures"} | {
                "errors": {n: c["error"] for n, c in caps["captures"].items()
                           if c["error"]}
            }
    for m in out.get("baselines", {}).values():
        m.pop("confusion_runs", None)
    return out


def score_captures(
    model: LocalModel | Path, captures: list[Path], *, merged: bool = False
) -> dict[str, Any]:
    """Judge every session of sysdig capture files as the worker would.

    Each capture is read with ``producers.sysdig``, sessionized with the default
    policy and judged by ``core.detector.Detector`` right after each batch (so
    running snapshots are scored as they happen), with the model's threshold.

    Args:
        model: a loaded model, or its folder (a version folder, or
            ``<base>/<name>`` for the newest version).
        captures: ``.scap`` files; unreadable ones are reported, not raised.
        merged: read every capture as one host's stream, in the order given,
            through one sessionizer (what the worker does when one collector
            publishes them, as the demo's does): a process seen in several
            captures of the same machine becomes one session, with the time
            between the captures inside it. Otherwise each capture is judged
            on its own.

    Returns:
        ``max_malicious``, ``alerts`` (by reason) and, per capture (or once,
        under ``merged``), its judged sessions (name, trigger, events,
        behaves_like, confidence, malicious).
    """
    from systerns.core.detector import Detector
    from systerns.core.errors import SourceError
    from systerns.core.events import EventBatch
    from systerns.core.sessions import Sessionizer
    from systerns.producers.sysdig import read_capture

    if not isinstance(model, LocalModel):
        model = LocalModel(model)
    detector = Detector(
        model, policy=VerdictPolicy(malicious_threshold=model.malicious_threshold)
    )
    per_capture: dict[str, Any] = {}
    groups = [list(captures)] if merged else [[c] for c in captures]
    for group in groups:
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

        errors = []
        for scap in group:
            try:
                for item in read_capture(Path(scap), "capture-check"):
                    if isinstance(item, EventBatch):
                        judge(sessionizer.ingest(item))
            except SourceError as exc:
                errors.append(str(exc)[:200])
        judge(sessionizer.flush())
        name = f"{len(group)} captures as one host" if merged else Path(group[0]).name
        per_capture[name] = {"sessions": judged, "error": "; ".join(errors)}
    max_malicious = 0.0
    alerts: dict[str, int] = {}
    for entry in per_capture.values():
        for row in entry["sessions"]:
            max_malicious = max(max_malicious, row["malicious"])
            for reason in row["alerts"]:
                alerts[reason] = alerts.get(reason, 0) + 1
    log.info(
        "captures_scored",
        captures=len(captures),
        merged=merged,
        max_malicious=max_malicious,
        alerts=alerts,
    )
    return {
        "max_malicious": max_malicious,
        "alerts": alerts,
        "malicious_threshold": model.malicious_threshold,
        "merged": merged,
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
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the two baselines"
    )
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    if args.corpus_dir is not None:
        # A report always covers the real normal captures; --captures overrides.
        captures = args.captures or (default_captures() if args.report else [])
        out["held_out"] = evaluate(
            args.model_dir,
            args.corpus_dir,
            report_path=args.report,
            captures=captures,
            baselines=not args.no_baselines,
        )
        print(json.dumps(_summary(out["held_out"]), indent=2, default=str))
        return 0
    if args.captures:
        model = LocalModel(args.model_dir)
        out["captures"] = score_captures(model, args.captures)
        out["captures_merged"] = score_captures(model, args.captures, merged=True)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
