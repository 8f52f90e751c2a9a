"""Weights, training, metrics and the train-to-export path, on plumbing data.

PLUMBING DATA: every run here is a short hand-made syscall stream (labels
``plumbing_*``). The tests check wiring and arithmetic, never detection quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.features import FEATURE_DIM, OFFSETS
from systerns.core.syscalls import VOCAB_INDEX
from systerns.serving import dataset as dataset_module
from systerns.serving import evaluate as evaluate_module
from systerns.serving.client import LocalModel
from systerns.serving.dataset import UNKNOWN, Split
from systerns.serving.evaluate import evaluate, split_metrics
from systerns.serving.export import read_metadata, stage
from systerns.serving.model import FitConfig, balanced_weights, build_model
from systerns.serving.train import train

SECOND_NS = 1_000_000_000
PATTERNS = {
    "plumbing_reader": ("openat", "read", "read", "read", "close"),
    "plumbing_writer": ("openat", "write", "write", "fsync", "close"),
    "plumbing_miner": ("sched_setaffinity", "futex", "futex", "mmap", "setpriority"),
}


def test_balanced_weights_equalise_labels_and_runs() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    groups = np.array(["a", "a", "a", "b", "c"])

    w = balanced_weights(labels, groups)

    assert w.mean() == pytest.approx(1.0)
    assert w[:3].sum() == pytest.approx(w[3])  # run a (3 rows) == run b (1 row)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())


def test_balanced_weights_empty() -> None:
    assert balanced_weights(np.zeros(0), np.zeros(0)).shape == (0,)


def _split(
    labels: list[int],
    runs: list[str],
    final: list[bool],
    mal: list[float],
    renamed: list[bool],
    names: tuple[str, ...],
    shown: list[str],
    n_events: list[int],
) -> Split:
    n = len(labels)
    features = np.zeros((n, FEATURE_DIM), np.float32)
    # Whole sessions, from their execve (masquerading needs the image's start).
    features[:, OFFSETS["syscall_seen"] + VOCAB_INDEX["execve"]] = 1.0
    return Split(
        features=features,
        labels=np.array(labels, np.int32),
        label_names=np.array([names[x] for x in labels], object),
        malicious=np.array(mal, np.float32),
        run_ids=np.array(runs, object),
        renamed=np.array(renamed, bool),
        shown_names=np.array(shown, object),
        final=np.array(final, bool),
        n_events=np.array(n_events),
    )


def test_split_metrics_by_run() -> None:
    classes = ("sha1sum", "sha256sum", "xmrig", UNKNOWN)
    s1, s256, xm = 0, 1, 2
    # r1 sha256sum: wrong while running, right at the end.
    # r2 sha256sum shown as kworker: called sha1sum (an alias), confidently.
    # r3 xmrig: one snapshot over the threshold.
    # r4 sha1sum: called sha256sum (an alias), confidently: no masquerade.
    # r5 sha1sum: confidently called xmrig: a false masquerade alert.
    split = _split(
        labels=[s256, s256, s256, xm, xm, s1, s1],
        runs=["r1", "r1", "r2", "r3", "r3", "r4", "r5"],
        final=[False, True, True, False, True, True, True],
        mal=[0, 0, 0, 1, 1, 0, 0],
        renamed=[False, False, True, False, False, False, False],
        names=classes,
        shown=["sha256sum"] * 2 + ["kworker", "xmrig", "xmrig"] + ["sha1sum"] * 2,
        n_events=[100, 300, 500, 900, 1800, 300, 250],
    )
    predicted = [xm, s256, s1, xm, xm, s256, xm]
    confidence = [0.8, 0.9, 0.97, 0.9, 0.9, 0.99, 0.96]
    probs = np.full((7, 4), 0.0, np.float32)
    for row, (p, c) in enumerate(zip(predicted, confidence, strict=True)):
        probs[row] = (1 - c) / 3
        probs[row, p] = c
    mal = np.array([0.1, 0.2, 0.3, 0.95, 0.4, 0.1, 0.05], np.float32)

    m = split_metrics(classes, split, probs, mal, threshold=0.9)

    assert (m["runs"], m["rows"], m["renamed_runs"]) == (5, 7, 1)
    assert m["top1_accuracy_runs"] == 0.4
    assert m["top1_accuracy_renamed_runs"] == 0.0
    assert m["top1_alias_accuracy_runs"] == 0.8
    assert m["top1_alias_accuracy_renamed_runs"] == 1.0
    assert m["top1_accuracy_rows"] == pytest.approx(3 / 7, abs=1e-4)
    assert m["masquerade_alert_rate_renamed_benign_runs"] == 1.0
    assert m["masquerade_false_alert_rate_runs"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["miner_recall_runs"] == 1.0
    assert m["false_positive_rate_runs"] == 0.0
    assert m["malicious_recall_rows"] == 0.5
    assert m["malicious_roc_auc_rows"] == 1.0
    assert m["confusion_runs"][s256] == [1, 1, 0, 0]
    assert m["per_class_accuracy_runs"] == {
        "sha1sum": 0.0,
        "sha256sum": 0.5,
        "xmrig": 1.0,
    }
    assert m["errors_runs"] == [
        "sha1sum->sha256sum",
        "sha1sum->xmrig",
        "sha256sum->sha1sum",
    ]


def _plumbing_run(run_id: str, label: str, split: str, seconds: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    pattern = PATTERNS[label]
    pid = 200 + seed
    batches = []
    for s in range(seconds):
        names = [pattern[i % len(pattern)] for i in range(40)]
        if rng.random() < 0.5:
            names[rng.integers(40)] = "getpid"
        events = tuple(
            Syscall(10**18 + s * SECOND_NS + i * 1000, pid, n, 0, "/srv/plumbing")
            for i, n in enumerate(names)
        )
        info = ProcessInfo(
            "plumbing",
            "",
            pid,
            1,
            "kworker" if seed % 3 == 0 else label,
            "/srv/x",
            label,
        )
        batches.append(EventBatch(info, events, "strace"))
    return {
        "run_id": run_id,
        "label": label,
        "malicious": label == "plumbing_miner",
        "split": split,
        "renamed": seed % 3 == 0,
        "main_pid": pid,
        "main_exec_ts_ns": 0,
        "batches": batches,
    }


@pytest.fixture
def plumbing_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runs = []
    for label in PATTERNS:
        for k in range(6):
            seed = len(runs)
            runs.append(
                _plumbing_run(
                    f"{label}-{k}",
                    label,
                    "test" if k >= 4 else "train",
                    seconds=9 if label == "plumbing_miner" else 2,
                    seed=seed,
                )
            )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    manifest = {"runs": [r["run_id"] for r in runs], "programs": {}}
    (corpus / "manifest.json").write_text(json.dumps(manifest))

    def load_runs(_dir: Path, split: str | None = None) -> list[dict]:
        return [r for r in runs if split is None or r["split"] == split]

    monkeypatch.setattr(dataset_module, "load_runs", load_runs)
    monkeypatch.setattr(evaluate_module, "load_runs", load_runs)
    return corpus


def test_train_exports_and_evaluates(plumbing_corpus: Path, tmp_path: Path) -> None:
    base = tmp_path / "models"
    config = FitConfig(members=2, epochs=30, hidden_units=(16,), learning_rate=2e-2)

    with capture_logs() as logs:
        path = train(plumbing_corpus, base, version=3, seed=1, config=config)
    meta = read_metadata(path)
    report = tmp_path / "report.md"
    held_out = evaluate(base / "systerns", plumbing_corpus, report_path=report)

    assert path == base / "systerns" / "3"
    assert meta["classes"] == [*sorted(PATTERNS), UNKNOWN]
    assert meta["seed"] == 1
    assert len(meta["corpus_sha256"]) == 64
    assert meta["test_runs"] == 6 and meta["train_runs"] == 12
    epochs = [e for e in logs if e["event"] == "epoch_done"]
    assert [(e["member"], e["epoch"]) for e in epochs] == [
        (m, e) for m in (1, 2) for e in range(1, 31)
    ]
    # Three syscall patterns this distinct must be learnt.
    assert meta["metrics"]["test"]["top1_accuracy_runs"] == 1.0
    assert held_out["top1_accuracy_runs"] == 1.0
    assert held_out["runs"] == 6
    assert held_out["miner_recall_runs"] == 1.0
    assert held_out["false_positive_rate_runs"] == 0.0
    assert "Confusion matrix" in report.read_text()
    # The same rows scored as a source without CPU readings shows them.
    blind = held_out["without_cpu_readings"]
    assert blind["session_at_model_threshold"]["negatives"] == 4
    assert sum(n for _, n in blind["miners_caught_by_label"].values()) == 2
    assert "## Without CPU readings" in report.read_text()
    assert LocalModel(path).predict(np.zeros((1, FEATURE_DIM)))[0].model_version == 3


def test_train_refuses_existing_version(plumbing_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "models" / "systerns" / "1").mkdir(parents=True)

    with pytest.raises(FileExistsError):
        train(plumbing_corpus, tmp_path / "models", version=1)


def test_sqrt_input_survives_export(tmp_path: Path) -> None:
    """The sqrt input layer is rebuilt from its config when a version is saved."""
    config = FitConfig(members=1, hidden_units=(8,), input_transform="sqrt")
    model = build_model(3, config)
    x = np.full((2, FEATURE_DIM), 0.25, np.float32)

    staged = stage(model, ("a", "b", UNKNOWN), tmp_path, "m", 1, threshold=0.9)
    probs, _ = LocalModel(staged, version=1).predict_arrays(x)

    expected = model.predict(x, verbose=0)["command_probs"]
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert "sqrt_features" in {
        layer.name for m in model.layers if hasattr(m, "layers") for layer in m.layers
    }


def test_features_unseen_in_training_do_not_move_the_outputs(tmp_path: Path) -> None:
    """A column that is 0 in every training row is masked in the exported model."""
    from systerns.serving.model import fit_model

    rng = np.random.default_rng(3)
    x = np.zeros((40, FEATURE_DIM), np.float32)
    x[:, :20] = rng.random((40, 20), np.float32)
    labels = (x[:, 0] > 0.5).astype(np.int32)
    malicious = labels.astype(np.float32)
    groups = np.arange(40)
    config = FitConfig(members=1, epochs=2, hidden_units=(8,), dialect_share=0.0)
    model = fit_model(x, labels, malicious, groups, 3, config, seed=1)
    staged = stage(model, ("a", "b", UNKNOWN), tmp_path, "m", 1, threshold=0.9)
    local = LocalModel(staged, version=1)

    probe = x[:4].copy()
    probe_unseen = probe.copy()
    probe_unseen[:, 100:] = 1.0  # never non-zero in training
    probe_seen = probe.copy()
    probe_seen[:, :20] = 1.0 - probe_seen[:, :20]
    base = local.predict_arrays(probe)
    np.testing.assert_allclose(local.predict_arrays(probe_unseen)[1], base[1], atol=1e-6)
    np.testing.assert_allclose(local.predict_arrays(probe_unseen)[0], base[0], atol=1e-6)
    assert not np.allclose(local.predict_arrays(probe_seen)[0], base[0], atol=1e-4)
    # Without the mask the same unseen columns do move them.
    bare = fit_model(x, labels, malicious, groups, 3,
                     FitConfig(members=1, epochs=2, hidden_units=(8,),
                               mask_unseen=False, dialect_share=0.0), seed=1)
    out = bare.predict(probe, verbose=0)["command_probs"]
    out_unseen = bare.predict(probe_unseen, verbose=0)["command_probs"]
    assert not np.allclose(out, out_unseen, atol=1e-4)


def test_fast_gaps_read_as_the_third_bucket_after_export(tmp_path: Path) -> None:
    """Gap mass under ~8 us (sysdig's, never strace's) counts as bucket 2's."""
    from systerns.core.features import OFFSETS
    from systerns.core.sessions import SHAPE_BUCKETS

    rng = np.random.default_rng(5)
    x = rng.random((2, FEATURE_DIM)).astype(np.float32) * 0.1
    folded = x.copy()
    for start in [OFFSETS["gap_share"] + c * SHAPE_BUCKETS for c in range(3)] + [
            OFFSETS["gap_time_share"]]:
        folded[:, start + 2] += folded[:, start] + folded[:, start + 1]
        folded[:, start:start + 2] = 0.0
    on = build_model(3, FitConfig(members=1, hidden_units=(8,), mask_unseen=False))
    staged = stage(on, ("a", "b", UNKNOWN), tmp_path, "m", 1, threshold=0.9)
    local = LocalModel(staged, version=1)
    for got, want in zip(local.predict_arrays(x), local.predict_arrays(folded),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Without the fold, the same rows read differently.
    off = build_model(3, FitConfig(members=1, hidden_units=(8,), mask_unseen=False,
                                   fold_fast_gaps=False))
    a = off.predict(x, verbose=0)["command_probs"]
    b = off.predict(folded, verbose=0)["command_probs"]
    assert not np.allclose(a, b, atol=1e-5)


def test_excluded_label_is_never_learnt(plumbing_corpus: Path) -> None:
    """``exclude_labels`` leaves a label's runs out of both splits."""
    label = sorted(PATTERNS)[0]
    data = dataset_module.build_dataset(plumbing_corpus,
                                        exclude_labels=frozenset({label}))
    kept = dataset_module.build_dataset(plumbing_corpus)

    assert label not in data.classes and label in kept.classes
    assert data.train.n_runs == kept.train.n_runs - 4
    assert data.test.n_runs == kept.test.n_runs - 2
    assert not any(r.startswith(f"{label}-") for r in data.train.run_ids.tolist())


def test_evaluate_scores_excluded_labels_apart(plumbing_corpus: Path, tmp_path: Path) -> None:
    """A label left out of training is judged apart, not counted as a wrong answer."""
    base = tmp_path / "models"
    config = FitConfig(members=1, epochs=30, hidden_units=(16,), learning_rate=2e-2)
    path = train(plumbing_corpus, base, version=1, seed=1, config=config,
                 exclude_labels=frozenset({"plumbing_miner"}))
    report = tmp_path / "report.md"
    metrics = evaluate(base / "systerns", plumbing_corpus, report_path=report)

    assert read_metadata(path)["excluded_labels"] == ["plumbing_miner"]
    assert metrics["excluded_labels"] == ["plumbing_miner"]
    assert metrics["runs"] == 4 and metrics["top1_accuracy_runs"] == 1.0
    unseen = metrics["excluded_label_runs"]
    # Every run of the label, train split too: the model saw none of them.
    assert unseen["runs"] == 6
    assert {r["run_id"] for r in unseen["per_run"]} == {
        f"plumbing_miner-{k}" for k in range(6)}
    assert "## Labels left out of training" in report.read_text()
