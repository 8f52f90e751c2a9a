"""Model clients: gRPC to a PredictionService, or the SavedModel in process.

``ModelClient`` speaks TensorFlow Serving's Predict API, so it works against
``systerns serve`` and the real ``tensorflow_model_server`` alike. ``LocalModel``
calls the loaded signature directly (offline scan, benchmarks). Both return one
``Prediction`` per feature row. Class names and the feature version come from
the model's ``metadata`` signature, fetched once per served version.

Callers pass vectors of the newest ``FEATURE_VERSION``; each version extends the
one before, so a model trained on an older version gets the prefix it expects
(``core.features.fit_version``), and models of every version keep working. The
gRPC client learns which version the server serves (and its width) from the
``metadata`` signature, then pins its Predict requests to that version, asking
again every ``refresh_s`` so a newly deployed version is picked up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import structlog
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from systerns.core.errors import ModelError, ModelUnavailableError
from systerns.core.features import FEATURE_DIMS
from systerns.serving.export import (
    INPUT_FEATURES,
    SIGNATURE_METADATA,
    SIGNATURE_PREDICT,
    list_versions,
    version_dir,
)
from systerns.serving.model import OUTPUT_COMMAND, OUTPUT_MALICIOUS

log = structlog.get_logger(__name__)

#: Rows per Predict request (and per signature call in process).
DEFAULT_BATCH_ROWS = 256
#: Seconds the gRPC client trusts its idea of the server's newest version.
DEFAULT_REFRESH_S = 30.0
_TOP_K = 3
_UNAVAILABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)


@dataclass(frozen=True, slots=True)
class Prediction:
    """The model's answer for one session.

    Attributes:
        behaves_like: the most probable command class.
        confidence: its probability.
        malicious: probability that the session is malicious.
        model_version: the version that answered.
        top3: up to three ``(class, probability)`` pairs, most probable first.
    """

    behaves_like: str
    confidence: float
    malicious: float
    model_version: int
    top3: tuple[tuple[str, float], ...]


def to_predictions(
    classes: tuple[str, ...],
    command_probs: np.ndarray,
    malicious: np.ndarray,
    model_version: int,
) -> list[Prediction]:
    """Turn the two output tensors of a batch into one ``Prediction`` per row.

    Raises:
        ModelError: the outputs do not fit the class list or each other.
    """
    probs = np.asarray(command_probs, np.float32)
    mal = np.asarray(malicious, np.float32).reshape(-1)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(mal) != len(probs):
        raise ModelError(
            f"outputs {probs.shape} and {mal.shape} do not fit {len(classes)} classes"
        )

    order = np.argsort(-probs, axis=1, kind="stable")[:, :_TOP_K]
    out = []
    for row, ranked, m in zip(probs, order, mal, strict=True):
        top = tuple((classes[i], float(row[i])) for i in ranked)
        out.append(Prediction(top[0][0], top[0][1], float(m), model_version, top))
    return out


def _as_batch(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (rows, dim), got shape {x.shape}")
    return x


def _fit_width(x: np.ndarray, feature_version: int, feature_dim: int) -> np.ndarray:
    """The prefix of newer-version rows that a model of ``feature_version`` reads.

    Rows no wider than the model's are left alone (a narrower row is the
    caller's error and the model refuses it).
    """
    if x.shape[1] > feature_dim and FEATURE_DIMS.get(feature_version) == feature_dim:
        return x[:, :feature_dim]
    return x


def _decode_classes(values: np.ndarray) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


class LocalModel:
    """A SavedModel loaded in this process, with ``ModelClient``'s interface.

    Calls the exported ``serving_default`` signature, never Keras eagerly.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        version: int | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        """Load a version.

        Args:
            model_dir: a version folder (holding ``saved_model.pb``), or the
                ``<base>/<name>`` folder above the versions.
            version: for a ``<base>/<name>`` folder, the version to load (the
                newest when None); for a version folder whose name is not a number
                (a staging folder), the number to report.
            batch_rows: rows per signature call.

        Raises:
            ModelError: no SavedModel at that place.
        """
        model_dir = Path(model_dir)
        if not (model_dir / "saved_model.pb").is_file():
            versions = list_versions(model_dir.parent, model_dir.name)
            if not versions or (version is not None and version not in versions):
                raise ModelError(f"no model version {version or ''} under {model_dir}")
            version = versions[-1] if version is None else version
            model_dir = version_dir(model_dir.parent, model_dir.name, version)
        elif version is None:
            version = int(model_dir.name) if model_dir.name.isdigit() else 0

        self.path = model_dir
        self.version = version
        self.batch_rows = batch_rows
        self._loaded = tf.saved_model.load(str(model_dir))
        self._predict = self._loaded.signatures[SIGNATURE_PREDICT]
        meta = self._loaded.signatures[SIGNATURE_METADATA]()
        self.classes = _decode_classes(meta["classes"].numpy())
        self.feature_version = int(meta["feature_version"].numpy())
        self.feature_dim = int(meta["feature_dim"].numpy())
        # Stored as float32: 0.9 comes back as 0.899999976.
        self.malicious_threshold = round(float(meta["malicious_threshold"].numpy()), 6)
        log.info(
            "local_model_loaded",
            path=str(model_dir),
            version=version,
            classes=len(self.classes),
        )

    def predict_arrays(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for a batch: ``(command_probs, malicious)`` arrays.

        Rows of a newer feature version are cut to the prefix this model reads.
        """
        x = _fit_width(_as_batch(features), self.feature_version, self.feature_dim)
        probs, mal = [], []
        for start in range(0, len(x), self.batch_rows):
            out = self._predict(
                **{INPUT_FEATURES: tf.constant(x[start : start + self.batch_rows])}
            )
            probs.append(out[OUTPUT_COMMAND].numpy())
            mal.append(out[OUTPUT_MALICIOUS].numpy())
        if not probs:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros(0, np.float32)
        return np.concatenate(probs), np.concatenate(mal)

    def predict(self, features: np.ndarray) -> list[Prediction]:
        """One ``Prediction`` per row of a ``(n, FEATURE_DIM)`` float array."""
        probs, mal = self.predict_arrays(features)
        return to_predictions(self.classes, probs, mal, self.version)


class ModelClient:
    """Predict through a TensorFlow Serving PredictionService over gRPC.

    Every call carries a deadline. Errors surface as ``ModelUnavailableError``
    (server down or too slow) or ``ModelError`` (anything else it answered).
    """

    def __init__(
        self,
        target: str,
        model_name: str = "systerns",
        *,
        version: int | None = None,
        timeout_s: float = 2.0,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        channel: grpc.Channel | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        """Open a channel; nothing is sent yet.

        Args:
            target: ``host:port`` of the server.
            model_name: the served model's name.
            version: ask for this version; the server's newest when None.
            timeout_s: deadline of each request.
            batch_rows: rows per Predict request.
            channel: an existing channel to use instead of opening one.
            refresh_s: with ``version`` None, ask which version is the newest
                again after this many seconds (0: before every batch).
        """
        self.target = target
        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        self.batch_rows = batch_rows
        self.refresh_s = refresh_s
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._classes: dict[int, tuple[str, ...]] = {}
        self._shape: dict[int, tuple[int, int]] = {}
        self._newest: tuple[int, float] | None = None

    def close(self) -> None:
        """Close the channel if this client opened it."""
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(self, features: np.ndarray) -> list[Prediction]:
        """One ``Prediction`` per row; one request per ``batch_rows`` rows.

        Args:
            features: ``(n, FEATURE_DIM)`` float array (a single row may be 1-D),
                of the newest feature version or of the served model's.

        Returns:
            Predictions in row order.

        Raises:
            ValueError: features are not 1-D or 2-D.
            ModelUnavailableError: the server is unreachable or missed the deadline.
            ModelError: the server refused the request or answered badly.
        """
        x = _as_batch(features)
        pinned = self._target_version()
        if pinned in self._shape:
            x = _fit_width(x, *self._shape[pinned])
        out: list[Prediction] = []
        for start in range(0, len(x), self.batch_rows):
            chunk = x[start : start + self.batch_rows]
            response = self._call(
                SIGNATURE_PREDICT, {INPUT_FEATURES: chunk}, pinned or None
            )
            served = response.model_spec.version.value
            outputs = self._decode(response, (OUTPUT_COMMAND, OUTPUT_MALICIOUS))
            out.extend(
                to_predictions(
                    self.classes(served),
                    outputs[OUTPUT_COMMAND],
                    outputs[OUTPUT_MALICIOUS],
                    served,
                )
            )
        return out

    def _target_version(self) -> int:
        """The version to send to: the chosen one, else the server's newest.

        The newest is learnt from a ``metadata`` call (which also caches that
        version's classes and feature shape) and trusted for ``refresh_s``.
        Returns 0 when the server leaves the version out of its answers.
        """
        if self.version is not None:
            if self.version not in self._shape:
                self.classes(self.version)
            return self.version
        now = time.monotonic()
        if self._newest is not None and now - self._newest[1] < self.refresh_s:
            return self._newest[0]
        served = self._load_metadata(None)
        self._newest = (served, now)
        return served

    def _load_metadata(self, version: int | None) -> int:
        response = self._call(SIGNATURE_METADATA, {}, version)
        served = response.model_spec.version.value or (version or 0)
        names = self._decode(response, ("classes",))["classes"]
        self._classes[served] = _decode_classes(names.reshape(-1))
        if "feature_version" in response.outputs and "feature_dim" in response.outputs:
            self._shape[served] = (
                int(tf.make_ndarray(response.outputs["feature_version"])),
                int(tf.make_ndarray(response.outputs["feature_dim"])),
            )
        log.info(
            "model_classes_loaded",
            target=self.target,
            version=served,
            classes=len(self._classes[served]),
            feature_shape=self._shape.get(served),
        )
        return served

    def classes(self, version: int) -> tuple[str, ...]:
        """Class names of a served version, asked once and then remembered.

        Raises:
            ModelUnavailableError: the server is unreachable.
            ModelError: that version has no usable ``metadata`` signature.
        """
        if version not in self._classes:
            # A server that leaves the version out of its answer reports 0.
            served = self._load_metadata(version or None)
            if served != version:
                self._classes[version] = self._classes[served]
                if served in self._shape:
                    self._shape[version] = self._shape[served]
        return self._classes[version]

    def _call(
        self, signature: str, inputs: dict[str, np.ndarray], version: int | None
    ) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        try:
            return self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            log.warning(
                "model_request_failed",
                target=self.target,
                code=code.name,
                detail=detail,
            )
            error = ModelUnavailableError if code in _UNAVAILABLE_CODES else ModelError
            raise error(f"{code.name}: {detail}") from exc

    @staticmethod
    def _decode(
        response: predict_pb2.PredictResponse, names: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        missing = [n for n in names if n not in response.outputs]
        if missing:
            raise ModelError(f"response lacks outputs {missing}")
        return {n: tf.make_ndarray(response.outputs[n]) for n in names}
