"""SavedModel export in TensorFlow Serving's ``<base>/<name>/<version>/`` layout.

A version folder holds ``saved_model.pb`` and ``variables/`` with two signatures:

- ``serving_default``: input ``features`` float32 ``[None, FEATURE_DIM]``; outputs
  ``command_probs`` float32 ``[None, n_classes]`` and ``malicious`` float32 ``[None]``.
- ``metadata``: no input; outputs ``classes`` (string ``[n_classes]``, the order of
  ``command_probs``), ``feature_version`` and ``feature_dim`` (int32 scalars) and
  ``malicious_threshold`` (float32 scalar). It lets a client of the real
  ``tensorflow_model_server`` learn the class names through ``Predict``.

``assets.extra/systerns.json`` (ignored by TF Serving) repeats that and adds the
corpus hash, metrics, seed and creation time. Versions are written to a dot-folder
and renamed into place, so a server polling the base never sees half a model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import keras
import structlog
import tensorflow as tf

from systerns.core.features import FEATURE_DIM, FEATURE_VERSION
from systerns.serving.model import OUTPUT_COMMAND, OUTPUT_MALICIOUS

log = structlog.get_logger(__name__)

SIGNATURE_PREDICT = "serving_default"
SIGNATURE_METADATA = "metadata"
INPUT_FEATURES = "features"
METADATA_FILE = Path("assets.extra") / "systerns.json"


class _ServingModule(tf.Module):
    """What gets saved: the weights, the class names and the two signatures."""

    def __init__(
        self, model: keras.Model, classes: tuple[str, ...], threshold: float
    ) -> None:
        super().__init__(name="systerns")
        self.model = model
        self.classes = tf.constant(list(classes), dtype=tf.string)
        self.threshold = tf.constant(threshold, dtype=tf.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, FEATURE_DIM], tf.float32, name=INPUT_FEATURES)
        ]
    )
    def predict(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self.model(features, training=False)
        return {
            OUTPUT_COMMAND: out[OUTPUT_COMMAND],
            OUTPUT_MALICIOUS: tf.reshape(out[OUTPUT_MALICIOUS], [-1]),
        }

    @tf.function(input_signature=[])
    def metadata(self) -> dict[str, tf.Tensor]:
        return {
            "classes": tf.identity(self.classes),
            "feature_version": tf.constant(FEATURE_VERSION, tf.int32),
            "feature_dim": tf.constant(FEATURE_DIM, tf.int32),
            "malicious_threshold": tf.identity(self.threshold),
        }


def version_dir(model_base: Path, model_name: str, version: int) -> Path:
    """Folder of one version, ``<base>/<name>/<version>``."""
    return Path(model_base) / model_name / str(version)


def list_versions(model_base: Path, model_name: str) -> list[int]:
    """Versions under ``<base>/<name>`` that hold a ``saved_model.pb``, ascending."""
    root = Path(model_base) / model_name
    if not root.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in root.iterdir()
        if p.name.isdigit() and (p / "saved_model.pb").is_file()
    )


def next_version(model_base: Path, model_name: str) -> int:
    """One more than the newest version, or 1 for an empty base."""
    versions = list_versions(model_base, model_name)
    return versions[-1] + 1 if versions else 1


def save_signatures(
    model: keras.Model,
    classes: tuple[str, ...],
    out_dir: Path,
    *,
    threshold: float,
) -> Path:
    """Write the SavedModel of a trained model into ``out_dir``.

    Only the weights are saved: the model is cloned without its optimizer, so Adam's
    slots do not triple the size of the export.

    Args:
        model: from ``model.build_model``, trained or not.
        classes: class names in the order of the ``command_probs`` units.
        out_dir: target folder; must not exist yet.
        threshold: malicious probability at which to alert.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: the class count differs from the model's output width.
        FileExistsError: ``out_dir`` exists.
    """
    width = model.output[OUTPUT_COMMAND].shape[-1]
    if width != len(classes):
        raise ValueError(f"{len(classes)} classes for a {width}-wide output")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(out_dir)

    # NOTE: keras.models.clone_model keeps the compiled optimizer; a model rebuilt
    # from its config has none.
    bare = keras.Model.from_config(model.get_config())
    bare.set_weights(model.get_weights())
    module = _ServingModule(bare, tuple(classes), threshold)
    tf.saved_model.save(
        module,
        str(out_dir),
        signatures={
            SIGNATURE_PREDICT: module.predict,
            SIGNATURE_METADATA: module.metadata,
        },
    )
    return out_dir


def write_metadata(model_dir: Path, metadata: dict[str, Any]) -> Path:
    """Write ``assets.extra/systerns.json`` into a version folder; return its path."""
    path = Path(model_dir) / METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """Read ``assets.extra/systerns.json`` of a version folder.

    Raises:
        FileNotFoundError: the version has no metadata file.
    """
    return json.loads((Path(model_dir) / METADATA_FILE).read_text())


def staging_dir(model_base: Path, model_name: str, version: int) -> Path:
    """Dot-folder beside the versions, where a version is built before it appears."""
    return Path(model_base) / model_name / f".staging-{version}"


def publish(staged: Path, target: Path, *, overwrite: bool = False) -> Path:
    """Move a finished staging folder to its version folder in one rename.

    Args:
        staged: from ``staging_dir``, with the SavedModel and metadata written.
        target: from ``version_dir``.
        overwrite: replace an existing version instead of failing.

    Returns:
        ``target``.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is False.
    """
    target = Path(target)
    if target.exists():
        if not overwrite:
            raise FileExistsError(target)
        shutil.rmtree(target)
    staged.rename(target)
    log.info("model_published", path=str(target))
    return target


def export_model(
    model: keras.Model,
    classes: tuple[str, ...],
    model_base: Path,
    model_name: str,
    *,
    metadata: dict[str, Any],
    version: int | None = None,
    threshold: float,
    overwrite: bool = False,
) -> Path:
    """Save, describe and publish one version in a single call.

    Args:
        model: from ``model.build_model``.
        classes: class names in output order.
        model_base: root of the layout.
        model_name: folder under the base.
        metadata: extra keys for ``systerns.json`` (classes, feature version and
            dimension, threshold and version are filled in).
        version: the version number; one past the newest when None.
        threshold: malicious probability at which to alert.
        overwrite: replace an existing version.

    Returns:
        The version folder.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is False.
    """
    version = next_version(model_base, model_name) if version is None else version
    target = version_dir(model_base, model_name, version)
    if target.exists() and not overwrite:
        raise FileExistsError(target)

    staged = stage(model, classes, model_base, model_name, version, threshold=threshold)
    write_metadata(staged, describe(classes, version, threshold) | metadata)
    return publish(staged, target, overwrite=overwrite)


def stage(
    model: keras.Model,
    classes: tuple[str, ...],
    model_base: Path,
    model_name: str,
    version: int,
    *,
    threshold: float,
) -> Path:
    """Save the SavedModel into a fresh staging folder (a stale one is removed).

    Returns:
        The staging folder, ready for ``write_metadata`` and ``publish``.
    """
    staged = staging_dir(model_base, model_name, version)
    if staged.exists():
        shutil.rmtree(staged)
    return save_signatures(model, classes, staged, threshold=threshold)


def describe(
    classes: tuple[str, ...], version: int, threshold: float
) -> dict[str, Any]:
    """The keys of ``systerns.json`` that every export has."""
    return {
        "classes": list(classes),
        "feature_version": FEATURE_VERSION,
        "feature_dim": FEATURE_DIM,
        "malicious_threshold": threshold,
        "version": version,
        "signatures": {
            SIGNATURE_PREDICT: {
                "inputs": {INPUT_FEATURES: ["float32", [None, FEATURE_DIM]]},
                "outputs": {
                    OUTPUT_COMMAND: ["float32", [None, len(classes)]],
                    OUTPUT_MALICIOUS: ["float32", [None]],
                },
            },
            SIGNATURE_METADATA: {
                "inputs": {},
                "outputs": {
                    "classes": ["string", [len(classes)]],
                    "feature_version": ["int32", []],
                    "feature_dim": ["int32", []],
                    "malicious_threshold": ["float32", []],
                },
            },
        },
    }
