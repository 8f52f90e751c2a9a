"""``systerns train``: corpus to an exported, evaluated model version.

Steps: build the split matrices (``serving.dataset``), fit the two-headed model
with fixed seeds (``serving.model``), save the SavedModel into a staging folder,
score train and test rows through the saved signature (not Keras), write
``assets.extra/systerns.json`` and rename the folder to its version.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import structlog
import tensorflow as tf

from systerns.serving.client import LocalModel
from systerns.serving.dataset import Dataset, build_dataset
from systerns.serving.evaluate import score_split
from systerns.serving.export import (
    describe,
    next_version,
    publish,
    stage,
    version_dir,
    write_metadata,
)
from systerns.serving.model import (
    DEFAULT_MALICIOUS_THRESHOLD,
    FitConfig,
    fit_model,
)

log = structlog.get_logger(__name__)


def train(
    corpus_dir: Path,
    out_base: Path,
    *,
    model_name: str = "systerns",
    version: int | None = None,
    seed: int = 7,
    config: FitConfig | None = None,
    threshold: float = DEFAULT_MALICIOUS_THRESHOLD,
    overwrite: bool = False,
    exclude_labels: frozenset[str] = frozenset(),
) -> Path:
    """Train on the corpus's train runs and export one version.

    Args:
        corpus_dir: the lab corpus (``manifest.json`` and its recordings).
        out_base: the model base; the version lands in ``<out_base>/<model_name>/``.
        model_name: folder and served name of the model.
        version: version number; one past the newest when None.
        seed: seed of Python, NumPy and TensorFlow for the whole run.
        config: hyper-parameters; ``FitConfig()`` when None.
        threshold: malicious probability to alert at, stored in the model.
        overwrite: replace an existing version folder.
        exclude_labels: labels whose runs are left out of both splits (the
            model never learns them; its metadata lists them). An evaluation
            of the same corpus still scores their test runs, as unseen.

    Returns:
        The version folder.

    Raises:
        FileNotFoundError: no corpus manifest.
        FileExistsError: the version exists and ``overwrite`` is False.
        ValueError: the corpus yields no training rows.
    """
    started = time.monotonic()
    config = config or FitConfig()
    version = next_version(out_base, model_name) if version is None else version
    target = version_dir(out_base, model_name, version)
    if target.exists() and not overwrite:
        raise FileExistsError(target)

    data = build_dataset(corpus_dir, exclude_labels=exclude_labels)
    return train_on(
        data,
        out_base,
        model_name=model_name,
        version=version,
        seed=seed,
        config=config,
        threshold=threshold,
        overwrite=overwrite,
        started=started,
        excluded=exclude_labels,
    )


def train_on(
    data: Dataset,
    out_base: Path,
    *,
    model_name: str,
    version: int,
    seed: int,
    config: FitConfig,
    threshold: float,
    overwrite: bool = False,
    started: float | None = None,
    excluded: frozenset[str] = frozenset(),
) -> Path:
    """Fit, export and describe a version from an already built dataset.

    See ``train`` for the arguments; ``started`` is the ``time.monotonic()`` at
    which the whole run began (for the reported duration).
    """
    started = time.monotonic() if started is None else started
    tf.config.experimental.enable_op_determinism()
    model = fit_model(
        data.train.features,
        data.train.labels,
        data.train.malicious,
        data.train.run_ids,
        len(data.classes),
        config,
        seed=seed,
        label_names=data.train.label_names,
    )
    fit_s = time.monotonic() - started

    staged = stage(
        model, data.classes, out_base, model_name, version, threshold=threshold
    )
    saved = LocalModel(staged, version=version)
    train_metrics = score_split(saved, data.train)
    test_metrics = score_split(saved, data.test) if len(data.test) else {}
    metadata = describe(data.classes, version, threshold) | {
        "model_name": model_name,
        "corpus_sha256": data.corpus_sha256,
        "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fit_config": {
            "members": config.members,
            "epochs": config.epochs,
            "batch_rows": config.batch_rows,
            "learning_rate": config.learning_rate,
            "hidden_units": list(config.hidden_units),
            "dropout": config.dropout,
            "input_transform": config.input_transform,
            "mask_unseen": config.mask_unseen,
            "dialect_share": config.dialect_share,
            "fold_fast_gaps": config.fold_fast_gaps,
            "cpu_blind_share": config.cpu_blind_share,
            "cpu_only_labels": list(config.cpu_only_labels),
        },
        "excluded_labels": sorted(excluded),
        "train_runs": data.train.n_runs,
        "train_rows": len(data.train),
        "test_runs": data.test.n_runs,
        "test_rows": len(data.test),
        "metrics": {"train": train_metrics, "test": test_metrics},
        "train_duration_s": round(time.monotonic() - started, 1),
        "tensorflow_version": tf.__version__,
    }
    write_metadata(staged, metadata)
    path = publish(
        staged, version_dir(out_base, model_name, version), overwrite=overwrite
    )
    log.info(
        "training_done",
        path=str(path),
        fit_s=round(fit_s, 1),
        total_s=metadata["train_duration_s"],
        train_top1_runs=train_metrics["top1_accuracy_runs"],
        test_top1_runs=test_metrics.get("top1_accuracy_runs"),
        test_top1_renamed_runs=test_metrics.get("top1_accuracy_renamed_runs"),
        test_miner_recall_runs=test_metrics.get("miner_recall_runs"),
        test_false_positive_rate_runs=test_metrics.get("false_positive_rate_runs"),
    )
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``systerns train``; returns the exit code."""
    from systerns.core.logs import configure

    configure()
    parser = argparse.ArgumentParser(prog="systerns train", description=__doc__)
    parser.add_argument("--corpus", type=Path, default=Path("var/lab"))
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--model-name", default="systerns")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--exclude-label", action="append", default=[],
                        help="leave this label's runs out (repeatable)")
    args = parser.parse_args(argv)
    try:
        train(
            args.corpus,
            args.out,
            model_name=args.model_name,
            version=args.version,
            seed=args.seed,
            overwrite=args.overwrite,
            exclude_labels=frozenset(args.exclude_label),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        log.error("training_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
