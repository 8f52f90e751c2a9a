"""``systerns serve``: a gRPC PredictionService that answers like TensorFlow Serving.

It implements ``Predict`` and ``GetModelMetadata`` of
``tensorflow_serving.apis.prediction_service_pb2_grpc`` on the same messages, so one
client works with this server and with ``tensorflow_model_server``:

- every version folder under ``<base>/<name>/`` is loaded at start; a request
  without a version gets the newest, one with a version gets that one;
- unknown model name or version: ``NOT_FOUND``; unknown signature:
  ``FAILED_PRECONDITION``; missing, extra or ill-shaped inputs, wrong dtype,
  unknown output filter: ``INVALID_ARGUMENT``;
- ``GetModelMetadata`` answers ``metadata["signature_def"]``: a packed
  ``SignatureDefMap`` read from ``saved_model.pb``, as TF Serving does.

Only the loaded signatures run; Keras is never called eagerly.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import structlog
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from systerns.core.errors import ModelError
from systerns.serving.export import SIGNATURE_PREDICT, list_versions, version_dir

log = structlog.get_logger(__name__)

#: TF Serving's default gRPC port.
DEFAULT_PORT = 8500
_METADATA_FIELD = "signature_def"


class _RpcFailure(Exception):
    """A request refused with a gRPC status; turned into ``context.abort``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Servable:
    """One loaded model version.

    Attributes:
        version: the folder's number.
        path: the version folder.
        loaded: the object ``tf.saved_model.load`` returned (kept alive for the
            variables the signatures use).
        signatures: signature name to concrete function.
        signature_defs: signature name to ``SignatureDef`` from ``saved_model.pb``.
    """

    version: int
    path: Path
    loaded: Any
    signatures: Mapping[str, Callable[..., dict[str, tf.Tensor]]]
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]


def load_servable(path: Path, version: int) -> Servable:
    """Load one version folder and read its signature definitions.

    Raises:
        ModelError: the folder holds no readable SavedModel.
    """
    try:
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load SavedModel at {path}: {exc}") from exc
    if not proto.meta_graphs:
        raise ModelError(f"SavedModel at {path} has no meta graph")
    return Servable(
        version=version,
        path=Path(path),
        loaded=loaded,
        signatures=dict(loaded.signatures),
        signature_defs=dict(proto.meta_graphs[0].signature_def),
    )


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata for every version of one model."""

    def __init__(self, model_name: str, servables: Mapping[int, Servable]) -> None:
        """Serve the given versions under ``model_name``.

        Raises:
            ModelError: no versions.
        """
        if not servables:
            raise ModelError(f"no versions to serve for model {model_name!r}")
        self.model_name = model_name
        self.servables = dict(servables)
        self.latest = max(self.servables)

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Run a signature on the request's input tensors."""
        started = time.perf_counter()
        try:
            servable = self._resolve(request.model_spec)
            name = request.model_spec.signature_name or SIGNATURE_PREDICT
            response = self._predict(servable, name, request)
        except _RpcFailure as failure:
            log.info("predict_refused", code=failure.code.name, detail=failure.message)
            context.abort(failure.code, failure.message)
        log.debug(
            "predict_done",
            version=servable.version,
            signature=name,
            duration_ms=round((time.perf_counter() - started) * 1e3, 2),
        )
        return response

    def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Return the version's signature definitions, packed as TF Serving does."""
        try:
            servable = self._resolve(request.model_spec)
            fields = list(request.metadata_field)
            if not fields:
                raise _RpcFailure(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "metadata_field is empty; ask for signature_def",
                )
            unknown = [f for f in fields if f != _METADATA_FIELD]
            if unknown:
                raise _RpcFailure(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unsupported metadata_field {unknown}",
                )
        except _RpcFailure as failure:
            log.info("metadata_refused", code=failure.code.name, detail=failure.message)
            context.abort(failure.code, failure.message)

        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            defs.signature_def[key].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, self.model_name, servable.version, "")
        response.metadata[_METADATA_FIELD].Pack(defs)
        return response

    def _resolve(self, spec: model_pb2.ModelSpec) -> Servable:
        if spec.name != self.model_name:
            raise _RpcFailure(
                grpc.StatusCode.NOT_FOUND, f"model {spec.name!r} is not served here"
            )
        if spec.WhichOneof("version_choice") == "version_label":
            raise _RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                "version labels are not supported; give a version",
            )
        if not spec.HasField("version"):
            return self.servables[self.latest]
        servable = self.servables.get(spec.version.value)
        if servable is None:
            raise _RpcFailure(
                grpc.StatusCode.NOT_FOUND,
                f"model {spec.name!r} has no version {spec.version.value}; "
                f"served: {sorted(self.servables)}",
            )
        return servable

    def _predict(
        self, servable: Servable, name: str, request: predict_pb2.PredictRequest
    ) -> predict_pb2.PredictResponse:
        fn = servable.signatures.get(name)
        if fn is None:
            raise _RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION, f"signature {name!r} not found"
            )
        specs: dict[str, tf.TensorSpec] = fn.structured_input_signature[1]
        sent, wanted = set(request.inputs), set(specs)
        if sent != wanted:
            raise _RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"inputs {sorted(sent)} do not match signature inputs {sorted(wanted)}",
            )
        inputs = {
            key: _decode_input(key, request.inputs[key], specs[key]) for key in specs
        }

        outputs_wanted = list(request.output_filter) or list(fn.structured_outputs)
        unknown = [o for o in outputs_wanted if o not in fn.structured_outputs]
        if unknown or len(set(outputs_wanted)) != len(outputs_wanted):
            raise _RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bad output_filter {outputs_wanted}; outputs are "
                f"{sorted(fn.structured_outputs)}",
            )

        try:
            result = fn(**inputs)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc

        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, self.model_name, servable.version, name)
        for key in outputs_wanted:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(result[key].numpy()))
        return response


def _decode_input(key: str, proto: Any, spec: tf.TensorSpec) -> tf.Tensor:
    try:
        array = tf.make_ndarray(proto)
    except (TypeError, ValueError) as exc:
        raise _RpcFailure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {key!r} is not a readable tensor: {exc}",
        ) from exc
    if tf.as_dtype(array.dtype) != spec.dtype:
        raise _RpcFailure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {key!r} is {tf.as_dtype(array.dtype).name}, "
            f"signature wants {spec.dtype.name}",
        )
    if not spec.shape.is_compatible_with(array.shape):
        raise _RpcFailure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {key!r} has shape {list(array.shape)}, "
            f"signature wants {spec.shape.as_list()}",
        )
    return tf.constant(np.ascontiguousarray(array))


def _fill_spec(
    spec: model_pb2.ModelSpec, name: str, version: int, signature: str
) -> None:
    spec.name = name
    spec.version.value = version
    spec.signature_name = signature


def load_model(model_base: Path, model_name: str) -> dict[int, Servable]:
    """Load every version folder under ``<base>/<name>``.

    Raises:
        ModelError: no version there, or one that cannot be loaded.
    """
    versions = list_versions(model_base, model_name)
    if not versions:
        raise ModelError(f"no model versions under {Path(model_base) / model_name}")
    servables = {}
    for v in versions:
        servables[v] = load_servable(version_dir(model_base, model_name, v), v)
        log.info(
            "model_version_loaded",
            model=model_name,
            version=v,
            signatures=sorted(servables[v].signatures),
        )
    return servables


def build_server(
    model_base: Path,
    model_name: str,
    port: int,
    host: str = "127.0.0.1",
    *,
    max_workers: int = 4,
) -> grpc.Server:
    """Load the model's versions and bind a server; the caller starts it.

    Args:
        model_base: root of the ``<base>/<name>/<version>`` layout.
        model_name: the folder under the base, and the name clients ask for.
        port: TCP port to bind.
        host: address to bind; loopback by default.
        max_workers: threads answering requests.

    Returns:
        A bound, not yet started ``grpc.Server``.

    Raises:
        ModelError: no loadable version.
        OSError: the address cannot be bound.
    """
    service = PredictionService(model_name, load_model(model_base, model_name))
    # No SO_REUSEPORT: a second server on a port in use must fail, not share
    # the port's traffic with the first one.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot bind {host}:{port}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return server


def tcp_port(text: str) -> int:
    """A TCP port for argparse: 1 to 65535.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return port


def serve(
    model_base: Path,
    model_name: str,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    *,
    grace_s: float = 5.0,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain for up to ``grace_s`` seconds.

    Must run in the main thread (it installs signal handlers).

    Raises:
        ModelError: no loadable version.
        OSError: the address cannot be bound.
    """
    server = build_server(model_base, model_name, port, host)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("server_stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    log.info("server_started", host=host, port=port, model=model_name)
    try:
        stop.wait()
    finally:
        server.stop(grace_s).wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.info("server_stopped")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``systerns serve``; returns the exit code."""
    from systerns.core.logs import configure

    configure()
    parser = argparse.ArgumentParser(prog="systerns serve", description=__doc__)
    parser.add_argument(
        "--model-base",
        type=Path,
        default=Path("models"),
        help="folder holding <name>/<version>/ (default: models)",
    )
    parser.add_argument("--model-name", default="systerns")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=tcp_port, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        serve(args.model_base, args.model_name, args.port, args.host)
    except (ModelError, OSError) as exc:
        log.error("server_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
