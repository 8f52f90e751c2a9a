"""The Keras model: what a process behaves like, and whether it is malicious.

One feature vector of ``FEATURE_DIM`` floats goes in; two outputs come out:
``command_probs`` (softmax over the command classes) and ``malicious`` (a sigmoid
probability). The model is a small ensemble: each member is a two-layer MLP with
both heads, trained on its own with its own seed, and the exported model averages
the members' outputs.

NOTE: the ensemble is there for the malicious head. The corpus has a handful of
miner runs, so what one network answers for programs far from every recording
(web servers, container daemons) depends on its seed: single networks gave
between 0.1 and 0.8 on the same normal capture. Averaging independent members
removes most of that lottery at a cost of a few seconds of training per member.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np
import structlog

from systerns.core.features import FEATURE_DIM, OFFSETS, SHAPE_BUCKETS
from systerns.core.verdicts import VerdictPolicy

log = structlog.get_logger(__name__)

#: Output names, shared by the Keras model and the exported signature.
OUTPUT_COMMAND = "command_probs"
OUTPUT_MALICIOUS = "malicious"
#: Alert when the malicious probability reaches this; recorded in the model and
#: taken from the verdict policy so evaluation measures what the pipeline does.
DEFAULT_MALICIOUS_THRESHOLD = VerdictPolicy().malicious_threshold


@dataclass(frozen=True, slots=True)
class FitConfig:
    """Hyper-parameters of one training run.

    Attributes:
        members: networks in the ensemble.
        epochs: passes over the training rows, per member.
        batch_rows: rows per gradient step.
        learning_rate: Adam's step size.
        hidden_units: widths of each member's dense layers.
        dropout: dropout rate after each dense layer.
        input_transform: ``identity`` (version 1) or ``sqrt``: the element-wise
            square root of the features, inside the model, so small syscall
            shares that tell short commands apart are not drowned by large ones.
            Every feature is non-negative and at most ~1, so the transform stays
            bounded on inputs far from the training data.
        mask_unseen: zero, inside the model, every feature that is 0 in all
            training rows (a syscall or path class no recording ever made). The
            weights from such an input never get a gradient and keep their
            random start, so without the mask a syscall the lab never saw (old
            kernels' ``select`` sleeps, ``clock_gettime`` on a VM without a
            vDSO clock) moves the outputs at random.
        dialect_share: share of the training rows also trained on as rewritten
            in another syscall dialect (``serving.augment``: waits in
            ``select``, time queries as syscalls); 0 for none.
        fold_fast_gaps: add the two fastest gap buckets (gaps under ~8 us) into
            the third, inside the model, in the gap-count and gap-time shares.
            strace's own cost per syscall keeps every recorded gap above them,
            while most of a sysdig capture's gaps fall there; unfolded, a
            capture shows a gap histogram no training row looks like.
        cpu_blind_share: share of the training rows that have CPU readings
            (feature version 3) also trained on with the CPU block zeroed, as
            a source without readings (a capture file) shows them; 0 for none.
        cpu_only_labels: labels whose rows never get such a copy: their
            sessions are, without CPU time, what benign programs do (the Perl
            miner's silent hashing threads beside a ``select`` loop), so a copy
            would teach that a ``select`` loop is a miner.
    """

    members: int = 5
    epochs: int = 120
    batch_rows: int = 64
    learning_rate: float = 2e-3
    hidden_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    # NOTE: version 1 was trained with epochs=80, dropout=0.2, identity input
    # (its assets.extra/systerns.json records it); version 2 with these.
    input_transform: str = "sqrt"
    mask_unseen: bool = True
    dialect_share: float = 0.0
    fold_fast_gaps: bool = True
    cpu_blind_share: float = 1.0
    cpu_only_labels: tuple[str, ...] = ("plminer",)


@keras.saving.register_keras_serializable(package="systerns")
class SqrtFeatures(keras.layers.Layer):
    """Element-wise square root of non-negative features (negatives read as 0)."""

    def call(self, inputs):  # type: ignore[no-untyped-def]
        return keras.ops.sqrt(keras.ops.maximum(inputs, 0.0))


@keras.saving.register_keras_serializable(package="systerns")
class SeenFeatures(keras.layers.Layer):
    """Multiplies the features by a fixed 0/1 mask of the ones training saw."""

    def __init__(self, dim: int = FEATURE_DIM, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.dim = dim
        self.mask = self.add_weight(
            name="seen", shape=(dim,), initializer="ones", trainable=False
        )

    def call(self, inputs):  # type: ignore[no-untyped-def]
        return inputs * self.mask

    def get_config(self) -> dict:
        return super().get_config() | {"dim": self.dim}


#: Gap buckets folded into ``FAST_GAP_TARGET`` by ``fold_fast_gaps``.
FAST_GAP_BUCKETS = (0, 1)
FAST_GAP_TARGET = 2


def fast_gap_pairs() -> tuple[list[int], list[int]]:
    """Columns of the fast gap buckets and the column each one is added into.

    The fast buckets of ``gap_share`` (each class) and of ``gap_time_share``
    move into the same block's ``FAST_GAP_TARGET`` bucket, so shares keep
    their sums.
    """
    starts = [OFFSETS["gap_share"] + c * SHAPE_BUCKETS for c in range(3)]
    starts.append(OFFSETS["gap_time_share"])
    src = [start + b for start in starts for b in FAST_GAP_BUCKETS]
    dst = [start + FAST_GAP_TARGET for start in starts for _ in FAST_GAP_BUCKETS]
    return src, dst


@keras.saving.register_keras_serializable(package="systerns")
class FoldFastGaps(keras.layers.Layer):
    """Adds the fast gap buckets into the third and zeroes them (fixed, no weights).

    A gather of the eight fast columns and an ``(8, dim)`` scatter product:
    cheap beside the first dense layer.
    """

    def __init__(self, dim: int = FEATURE_DIM, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.dim = dim
        src, dst = fast_gap_pairs()
        keep = np.ones(dim, np.float32)
        keep[src] = 0.0
        scatter = np.zeros((len(src), dim), np.float32)
        scatter[np.arange(len(src)), dst] = 1.0
        self._src = np.asarray(src, np.int32)
        self._keep = keep
        self._scatter = scatter

    def call(self, inputs):  # type: ignore[no-untyped-def]
        moved = keras.ops.take(inputs, self._src, axis=1)
        return inputs * self._keep + keras.ops.matmul(moved, self._scatter)

    def get_config(self) -> dict:
        return super().get_config() | {"dim": self.dim}


def seen_mask(features: np.ndarray) -> np.ndarray:
    """1.0 for each column that is non-zero in at least one row, else 0.0."""
    return (np.abs(features) > 0).any(axis=0).astype(np.float32)


def build_member(
    n_classes: int,
    config: FitConfig,
    name: str = "member",
    mask: np.ndarray | None = None,
) -> keras.Model:
    """Build one uncompiled member network.

    Args:
        n_classes: width of the ``command_probs`` softmax.
        config: layer sizes.
        name: the member's name (unique within an ensemble).
        mask: the ``SeenFeatures`` mask when ``config.mask_unseen`` (all ones
            when None: nothing masked until training sets it).

    Raises:
        ValueError: an unknown ``config.input_transform``.

    Returns:
        A functional model with input ``features`` and outputs ``command_probs``
        (``(n, n_classes)``) and ``malicious`` (``(n, 1)``).
    """
    features = keras.Input((FEATURE_DIM,), name="features")
    h = features
    if config.fold_fast_gaps:
        h = FoldFastGaps(name="fold_fast_gaps")(h)
    if config.mask_unseen:
        seen = SeenFeatures(name="seen_features")
        h = seen(h)
        if mask is not None:
            seen.mask.assign(np.asarray(mask, np.float32))
    if config.input_transform == "sqrt":
        h = SqrtFeatures(name="sqrt_features")(h)
    elif config.input_transform != "identity":
        raise ValueError(f"unknown input transform {config.input_transform!r}")
    for i, units in enumerate(config.hidden_units):
        h = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(h)
        h = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(h)
    command = keras.layers.Dense(n_classes, activation="softmax", name=OUTPUT_COMMAND)
    malicious = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_MALICIOUS)
    return keras.Model(
        features,
        {OUTPUT_COMMAND: command(h), OUTPUT_MALICIOUS: malicious(h)},
        name=name,
    )


def average_members(members: list[keras.Model]) -> keras.Model:
    """One model whose outputs are the mean of the members' outputs.

    Raises:
        ValueError: no members.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    features = keras.Input((FEATURE_DIM,), name="features")
    outs = [m(features) for m in members]
    if len(members) == 1:
        command = outs[0][OUTPUT_COMMAND]
        malicious = outs[0][OUTPUT_MALICIOUS]
    else:
        command = keras.layers.Average(name=OUTPUT_COMMAND)(
            [o[OUTPUT_COMMAND] for o in outs]
        )
        malicious = keras.layers.Average(name=OUTPUT_MALICIOUS)(
            [o[OUTPUT_MALICIOUS] for o in outs]
        )
    return keras.Model(
        features,
        {OUTPUT_COMMAND: command, OUTPUT_MALICIOUS: malicious},
        name="systerns",
    )


def build_model(n_classes: int, config: FitConfig | None = None) -> keras.Model:
    """The untrained ensemble (for tests and shape checks)."""
    config = config or FitConfig()
    return average_members(
        [build_member(n_classes, config, f"member_{i}") for i in range(config.members)]
    )


def balanced_weights(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Row weights giving every label the same total, and every group its share.

    Each group (a recorded run) first gets weight 1 spread over its rows, so a
    miner judged twenty times while it runs counts as one run, like a ``ls`` judged
    once. Runs are then reweighted so every label holds the same total weight:
    the few miner runs matter as much as the many benign ones. Weights average 1.

    Args:
        labels: class of each row (any sortable values, shape ``(n,)``).
        groups: run of each row, shape ``(n,)``.

    Returns:
        float32 weights of shape ``(n,)``.
    """
    n = len(labels)
    if n == 0:
        return np.zeros(0, np.float32)
    _, group_idx, group_rows = np.unique(
        groups, return_inverse=True, return_counts=True
    )
    per_row = 1.0 / group_rows[group_idx]
    _, label_idx = np.unique(labels, return_inverse=True)
    label_total = np.bincount(label_idx, weights=per_row)
    weights = per_row / label_total[label_idx]
    return (weights * n / weights.sum()).astype(np.float32)


class _EpochLog(keras.callbacks.Callback):
    """Logs one structlog event per finished epoch."""

    def __init__(self, member: int, members: int, epochs: int) -> None:
        super().__init__()
        self.member = member
        self.members = members
        self.epochs = epochs
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {k: round(float(v), 4) for k, v in (logs or {}).items()}
        log.info(
            "epoch_done",
            member=self.member + 1,
            members=self.members,
            epoch=epoch + 1,
            epochs=self.epochs,
            elapsed_s=round(time.monotonic() - self.started, 1),
            **values,
        )


def fit_model(
    features: np.ndarray,
    labels: np.ndarray,
    malicious: np.ndarray,
    groups: np.ndarray,
    n_classes: int,
    config: FitConfig | None = None,
    *,
    seed: int = 7,
    label_names: np.ndarray | None = None,
) -> keras.Model:
    """Train every member on its own, then return their average.

    Member ``i`` is built and shuffled under seed ``seed + i``, so a run with the
    same data, config and seed gives the same model.

    Args:
        features: ``(n, FEATURE_DIM)`` float32 rows.
        labels: class index per row.
        malicious: 1.0 for rows of malicious runs, else 0.0.
        groups: run id per row, for the per-run weighting.
        n_classes: width of the ``command_probs`` output.
        config: hyper-parameters; the defaults when None.
        seed: base seed.
        label_names: the run's own label per row, for ``cpu_only_labels``
            (every row may get a CPU-blind copy when None).

    Returns:
        The averaged ensemble, uncompiled.

    Raises:
        ValueError: no training rows.
    """
    config = config or FitConfig()
    if len(features) == 0:
        raise ValueError("no training rows")

    if config.cpu_blind_share > 0:
        from systerns.serving.augment import add_cpu_blind_rows

        eligible = np.ones(len(features), bool)
        if label_names is not None and config.cpu_only_labels:
            eligible[:len(label_names)] = ~np.isin(
                np.asarray(label_names, object), list(config.cpu_only_labels))
        n_real = len(features)
        features, labels, malicious, groups = add_cpu_blind_rows(
            features, labels, malicious, groups, eligible, seed=seed,
            share=config.cpu_blind_share,
        )
        log.info("cpu_blind_rows_added", rows=len(features) - n_real, real_rows=n_real)
    if config.dialect_share > 0:
        from systerns.serving.augment import add_dialect_rows

        n_real = len(features)
        features, labels, malicious, groups = add_dialect_rows(
            features, labels, malicious, groups, seed=seed,
            share=config.dialect_share,
        )
        log.info("dialect_rows_added", rows=len(features) - n_real, real_rows=n_real)
    targets = {OUTPUT_COMMAND: labels, OUTPUT_MALICIOUS: malicious.reshape(-1, 1)}
    weights = {
        OUTPUT_COMMAND: balanced_weights(labels, groups),
        OUTPUT_MALICIOUS: balanced_weights(malicious, groups),
    }
    mask = seen_mask(features) if config.mask_unseen else None
    if mask is not None:
        log.info("features_masked", unseen=int(len(mask) - mask.sum()),
                 features=len(mask))
    members = []
    for i in range(config.members):
        keras.utils.set_random_seed(seed + i)
        member = build_member(n_classes, config, f"member_{i}", mask)
        member.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            loss={
                OUTPUT_COMMAND: "sparse_categorical_crossentropy",
                OUTPUT_MALICIOUS: "binary_crossentropy",
            },
            weighted_metrics={
                OUTPUT_COMMAND: ["sparse_categorical_accuracy"],
                OUTPUT_MALICIOUS: ["binary_accuracy"],
            },
        )
        member.fit(
            features,
            targets,
            sample_weight=weights,
            epochs=config.epochs,
            batch_size=config.batch_rows,
            shuffle=True,
            verbose=0,
            callbacks=[_EpochLog(i, config.members, config.epochs)],
        )
        # A fresh copy carries the weights without the optimizer's slots.
        bare = build_member(n_classes, config, member.name, mask)
        bare.set_weights(member.get_weights())
        members.append(bare)
    return average_members(members)
