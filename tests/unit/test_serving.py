"""Export, gRPC server and clients of ``serving/``, on a plumbing-only model.

PLUMBING DATA: the model here is trained for a few steps on random vectors with
made-up class names (``plumbing_a`` ...). It checks that numbers travel intact
through SavedModel, gRPC and the clients; it says nothing about detection quality.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from systerns.core.errors import ModelError, ModelUnavailableError
from systerns.core.features import FEATURE_DIM, FEATURE_DIMS, FEATURE_VERSION
from systerns.serving.client import LocalModel, ModelClient, Prediction, to_predictions
from systerns.serving.export import (
    METADATA_FILE,
    export_model,
    list_versions,
    next_version,
    read_metadata,
)
from systerns.serving.model import FitConfig, fit_model
from systerns.serving.server import build_server

MODEL = "systerns"
PLUMBING_CLASSES = ("plumbing_a", "plumbing_b", "plumbing_c", "plumbing_d", "unknown")


def _plumbing_model(seed: int) -> keras.Model:
    """Two members fitted for two epochs on random rows (plumbing only)."""
    rng = np.random.default_rng(seed)
    x = rng.random((120, FEATURE_DIM), dtype=np.float32)
    labels = rng.integers(0, len(PLUMBING_CLASSES), 120)
    malicious = (labels == 0).astype(np.float32)
    config = FitConfig(members=2, epochs=2, hidden_units=(16,))
    return fit_model(
        x,
        labels,
        malicious,
        np.arange(120) // 4,
        len(PLUMBING_CLASSES),
        config,
        seed=seed,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two exported plumbing versions, 1 and 2, with different weights."""
    base = tmp_path_factory.mktemp("models")
    for version, seed in ((1, 11), (2, 22)):
        export_model(
            _plumbing_model(seed),
            PLUMBING_CLASSES,
            base,
            MODEL,
            metadata={"seed": seed, "data": "plumbing"},
            version=version,
            threshold=0.5,
        )
    return base


@pytest.fixture(scope="module")
def server_port(model_base: Path):
    port = _free_port()
    server = build_server(model_base, MODEL, port)
    server.start()
    yield port
    server.stop(0).wait()


@pytest.fixture(scope="module")
def stub(server_port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{server_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(5).random((7, FEATURE_DIM), dtype=np.float32)


def _request(x: np.ndarray | None, **spec: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.get("name", MODEL)
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    request.model_spec.signature_name = spec.get("signature", "serving_default")
    if x is not None:
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(x))
    return request


def _signature(version_dir: Path):
    return tf.saved_model.load(str(version_dir)).signatures["serving_default"]


def test_export_layout_and_metadata(model_base: Path) -> None:
    version = model_base / MODEL / "2"

    assert list_versions(model_base, MODEL) == [1, 2]
    assert next_version(model_base, MODEL) == 3
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables" / "variables.index").is_file()
    assert not list((model_base / MODEL).glob(".staging-*"))
    meta = read_metadata(version)
    assert meta["classes"] == list(PLUMBING_CLASSES)
    assert meta["feature_version"] == FEATURE_VERSION
    assert meta["feature_dim"] == FEATURE_DIM
    assert meta["seed"] == 22
    assert json.loads((version / METADATA_FILE).read_text())["version"] == 2


def test_export_refuses_to_overwrite(model_base: Path) -> None:
    with pytest.raises(FileExistsError):
        export_model(
            _plumbing_model(1),
            PLUMBING_CLASSES,
            model_base,
            MODEL,
            metadata={},
            version=1,
            threshold=0.5,
        )


def test_export_checks_class_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classes"):
        export_model(
            _plumbing_model(1),
            PLUMBING_CLASSES[:2],
            tmp_path,
            MODEL,
            metadata={},
            threshold=0.5,
        )


def test_exported_signatures(model_base: Path, rows: np.ndarray) -> None:
    loaded = tf.saved_model.load(str(model_base / MODEL / "1"))
    out = loaded.signatures["serving_default"](features=tf.constant(rows))
    meta = loaded.signatures["metadata"]()

    assert out["command_probs"].shape == (7, len(PLUMBING_CLASSES))
    assert out["malicious"].shape == (7,)
    np.testing.assert_allclose(out["command_probs"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert [c.decode() for c in meta["classes"].numpy()] == list(PLUMBING_CLASSES)
    assert int(meta["feature_dim"]) == FEATURE_DIM
    assert float(meta["malicious_threshold"]) == pytest.approx(0.5)


def test_predict_matches_inprocess_signature(
    stub, model_base: Path, rows: np.ndarray
) -> None:
    expected = _signature(model_base / MODEL / "2")(features=tf.constant(rows))

    response = stub.Predict(_request(rows), timeout=10)

    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["command_probs"]),
        expected["command_probs"].numpy(),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["malicious"]),
        expected["malicious"].numpy(),
        rtol=1e-6,
    )


def test_named_older_version_is_served(
    stub, model_base: Path, rows: np.ndarray
) -> None:
    old = _signature(model_base / MODEL / "1")(features=tf.constant(rows))
    new = _signature(model_base / MODEL / "2")(features=tf.constant(rows))

    response = stub.Predict(_request(rows, version=1), timeout=10)
    probs = tf.make_ndarray(response.outputs["command_probs"])

    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(probs, old["command_probs"].numpy(), rtol=1e-6)
    assert not np.allclose(probs, new["command_probs"].numpy())


def test_output_filter(stub, rows: np.ndarray) -> None:
    request = _request(rows)
    request.output_filter.append("malicious")

    response = stub.Predict(request, timeout=10)

    assert set(response.outputs) == {"malicious"}


def test_metadata_signature_over_grpc(stub) -> None:
    response = stub.Predict(_request(None, signature="metadata"), timeout=10)

    names = [c.decode() for c in tf.make_ndarray(response.outputs["classes"])]
    assert names == list(PLUMBING_CLASSES)
    assert int(tf.make_ndarray(response.outputs["feature_version"])) == FEATURE_VERSION


def test_get_model_metadata(stub) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")

    response = stub.GetModelMetadata(request, timeout=10)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    sig = defs.signature_def["serving_default"]

    assert response.model_spec.version.value == 2
    assert set(sig.inputs) == {"features"}
    assert [d.size for d in sig.inputs["features"].tensor_shape.dim] == [
        -1,
        FEATURE_DIM,
    ]
    assert sig.inputs["features"].dtype == tf.float32.as_datatype_enum
    assert set(sig.outputs) == {"command_probs", "malicious"}
    probs_dims = [d.size for d in sig.outputs["command_probs"].tensor_shape.dim]
    assert probs_dims == [-1, len(PLUMBING_CLASSES)]
    assert [d.size for d in sig.outputs["malicious"].tensor_shape.dim] == [-1]
    assert sig.method_name == "tensorflow/serving/predict"
    assert "metadata" in defs.signature_def


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND),
        ({"version": 9}, grpc.StatusCode.NOT_FOUND),
        ({"signature": "nope"}, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_predict_unknown_targets(stub, rows: np.ndarray, spec: dict, code) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(rows, **spec), timeout=10)

    assert info.value.code() == code


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, FEATURE_DIM - 1), np.float32),  # wrong width
        np.zeros((FEATURE_DIM,), np.float32),  # wrong rank
        np.zeros((3, FEATURE_DIM), np.float64),  # wrong dtype
    ],
)
def test_predict_bad_input_is_invalid_argument(stub, bad: np.ndarray) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(bad), timeout=10)

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_predict_wrong_input_name_is_invalid_argument(stub, rows: np.ndarray) -> None:
    request = _request(None)
    request.inputs["feature"].CopyFrom(tf.make_tensor_proto(rows))

    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_metadata_unknown_model(stub) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "nope"
    request.metadata_field.append("signature_def")

    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=10)

    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_client_matches_local_model(
    server_port: int, model_base: Path, rows: np.ndarray
) -> None:
    local = LocalModel(model_base / MODEL)
    with ModelClient(f"127.0.0.1:{server_port}", MODEL, batch_rows=3) as client:
        remote = client.predict(rows)

    expected = local.predict(rows)
    assert local.version == 2
    assert len(remote) == len(rows)
    for got, want in zip(remote, expected, strict=True):
        assert got.behaves_like == want.behaves_like
        assert got.confidence == pytest.approx(want.confidence, rel=1e-6)
        assert got.malicious == pytest.approx(want.malicious, rel=1e-6)
        assert got.model_version == 2
        assert [c for c, _ in got.top3] == [c for c, _ in want.top3]
        assert [p for _, p in got.top3] == pytest.approx([p for _, p in want.top3])


def test_client_selects_version(server_port: int, model_base: Path, rows) -> None:
    want = LocalModel(model_base / MODEL, version=1).predict(rows)
    with ModelClient(f"127.0.0.1:{server_port}", MODEL, version=1) as client:
        got = client.predict(rows)

    assert {p.model_version for p in got} == {1}
    assert [p.malicious for p in got] == pytest.approx([p.malicious for p in want])


def test_client_unknown_model_is_model_error(server_port: int, rows) -> None:
    with ModelClient(f"127.0.0.1:{server_port}", "nope") as client:
        with pytest.raises(ModelError) as info:
            client.predict(rows)

    assert not isinstance(info.value, ModelUnavailableError)
    assert "NOT_FOUND" in str(info.value)


def test_client_bad_width_is_model_error(server_port: int) -> None:
    with ModelClient(f"127.0.0.1:{server_port}", MODEL) as client:
        with pytest.raises(ModelError, match="INVALID_ARGUMENT"):
            client.predict(np.zeros((2, 3), np.float32))


def test_dead_server_is_unavailable_within_deadline(rows: np.ndarray) -> None:
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    with ModelClient(f"127.0.0.1:{port}", MODEL, timeout_s=0.5) as client:
        with pytest.raises(ModelUnavailableError):
            client.predict(rows)

    assert time.monotonic() - started < 2.0


def test_silent_server_is_unavailable_at_deadline(rows: np.ndarray) -> None:
    # A socket that accepts connections but never speaks gRPC.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        with ModelClient(f"127.0.0.1:{port}", MODEL, timeout_s=0.5) as client:
            with pytest.raises(ModelUnavailableError):
                client.predict(rows)

    assert time.monotonic() - started < 2.0


def test_local_model_batches_and_top3(model_base: Path, rows: np.ndarray) -> None:
    whole = LocalModel(model_base / MODEL / "2")
    split = LocalModel(model_base / MODEL / "2", batch_rows=2)

    a, b = whole.predict(rows), split.predict(rows)

    assert [p.behaves_like for p in a] == [p.behaves_like for p in b]
    for p in a:
        probs = [prob for _, prob in p.top3]
        assert p.top3[0] == (p.behaves_like, p.confidence)
        assert probs == sorted(probs, reverse=True)
        assert 0.0 <= p.malicious <= 1.0


def test_local_model_missing_version(model_base: Path) -> None:
    with pytest.raises(ModelError):
        LocalModel(model_base / MODEL, version=7)


def test_to_predictions_picks_argmax() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)

    out = to_predictions(("a", "b", "c"), probs, np.array([0.9, 0.1]), 4)

    assert isinstance(out[0], Prediction)
    assert (out[0].behaves_like, out[0].model_version) == ("b", 4)
    assert out[0].confidence == pytest.approx(0.7)
    assert out[0].malicious == pytest.approx(0.9)
    assert [c for c, _ in out[0].top3] == ["b", "c", "a"]
    assert out[1].behaves_like == "a"
    with pytest.raises(ModelError):
        to_predictions(("a", "b"), probs, np.array([0.9, 0.1]), 4)


def test_build_server_without_versions(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        build_server(tmp_path, MODEL, _free_port())


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(model_base: Path, rows, signum) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "systerns.serving.server",
            "--model-base",
            str(model_base),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        client = ModelClient(f"127.0.0.1:{port}", MODEL, timeout_s=1.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                answered = client.predict(rows)
                break
            except ModelUnavailableError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        client.close()
        proc.send_signal(signum)
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert len(answered) == len(rows)
    assert rc == 0
    assert b"server_stopped" in proc.stderr.read()


def test_export_holds_weights_only(model_base: Path) -> None:
    reader = tf.train.load_checkpoint(
        str(model_base / MODEL / "1" / "variables" / "variables")
    )
    names = list(reader.get_variable_to_shape_map())

    assert not [n for n in names if "optimizer" in n]
    assert any("kernel" in n for n in names)


REPO = Path(__file__).resolve().parents[2]
V1_FEATURES_MODEL = REPO / "models" / "systerns" / "2"  # trained on FEATURE_VERSION 1


@pytest.fixture(scope="module")
def mixed_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1: the committed model of feature version 1; 2: a plumbing one."""
    if not (V1_FEATURES_MODEL / "saved_model.pb").is_file():
        pytest.skip("the committed feature-version-1 model is missing")
    base = tmp_path_factory.mktemp("mixed")
    shutil.copytree(V1_FEATURES_MODEL, base / MODEL / "1")
    export_model(
        _plumbing_model(33), PLUMBING_CLASSES, base, MODEL,
        metadata={}, version=2, threshold=0.5,
    )
    return base


def test_old_feature_version_models_read_the_prefix(mixed_base: Path) -> None:
    """Newest-version rows fit a version-1 model in process and over gRPC."""
    rows = np.random.default_rng(9).random((5, FEATURE_DIM), dtype=np.float32)
    old = LocalModel(mixed_base / MODEL, version=1)
    want = old.predict(rows[:, : FEATURE_DIMS[1]])
    port = _free_port()
    server = build_server(mixed_base, MODEL, port)
    server.start()
    try:
        with ModelClient(f"127.0.0.1:{port}", MODEL, version=1) as pinned:
            got_old = pinned.predict(rows)
        with ModelClient(f"127.0.0.1:{port}", MODEL, refresh_s=0) as newest:
            got_new = newest.predict(rows)
    finally:
        server.stop(0).wait()

    assert (old.feature_version, old.feature_dim) == (1, FEATURE_DIMS[1])
    assert FEATURE_DIM > FEATURE_DIMS[1]
    assert [p.behaves_like for p in old.predict(rows)] == [p.behaves_like for p in want]
    assert [p.malicious for p in got_old] == pytest.approx([p.malicious for p in want])
    assert {p.model_version for p in got_old} == {1}
    assert {p.model_version for p in got_new} == {2}
    assert {p.behaves_like for p in got_new} <= set(PLUMBING_CLASSES)
