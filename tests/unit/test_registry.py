"""Schema Registry wire format, with confluent-kafka's in-memory ``mock://`` registry.

``SchemaRegistryClient.new_client`` turns a ``mock://`` URL into its
``MockSchemaRegistryClient`` (confluent-kafka 2.16): no server, no network.
Each test names its own registry so none shares state with another.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from systerns.core.errors import SchemaError
from systerns.core.verdicts import ModelAnswer, build_alert, build_verdict
from systerns.schemas.codec import Codec, latest
from systerns.schemas.registry import (
    DEFAULT_TOPICS,
    RegistryCodec,
    make_codec,
    registry_client,
    topic_subject,
)


@pytest.fixture
def registry_url() -> str:
    """A fresh in-memory registry for one test."""
    return f"mock://systerns-{uuid.uuid4().hex[:8]}"


def session() -> dict:
    """A session as the sessionizer keeps it."""
    return {
        "session_id": "node-1/c1/7/1",
        "host": "node-1",
        "container_id": "c1",
        "container_image": "app:1",
        "pid": 7,
        "ppid": 1,
        "comm": "kworker",
        "exe": "/usr/bin/kworker",
        "cmdline": "kworker",
        "exec_id": "1",
        "first_ts_ns": 10**18,
        "last_ts_ns": 10**18 + 10**9,
        "n_events": 300,
        "failed": 0,
        "counts": {"futex": 300},
        "paths": {},
        "tids": [7],
        "sample_paths": [],
    }


ANSWER = ModelAnswer("unknown", 0.5, 0.97, 1)


def alert() -> dict:
    """An alert record from the real ``build_alert``."""
    return build_alert(
        session(), ANSWER, "crypto_mining", "exit", model_name="m", now_ms=1
    )


def test_without_a_url_the_single_object_codec_is_used():
    """No registry configured: the existing C3 01 codec, unchanged."""
    for url in (None, ""):
        codec = make_codec("alert", url)

        assert isinstance(codec, Codec)
        assert codec.encode(alert())[:2] == b"\xc3\x01"


def test_round_trip_in_confluent_framing(registry_url):
    """Magic byte 0, the registered id (big endian), then the Avro datum."""
    codec = make_codec("alert", registry_url)
    record = alert()

    data = codec.encode(record)

    client = registry_client(registry_url)
    registered = client.get_latest_version("systerns.alerts-value")
    assert data[0] == 0
    assert int.from_bytes(data[1:5], "big") == registered.schema_id
    assert json.loads(registered.schema.schema_str) == latest("alert").raw
    datum = fastavro.schemaless_reader(io.BytesIO(data[5:]), latest("alert").parsed)
    assert datum == record
    assert codec.decode(data) == record


def test_topic_name_strategy_names_the_subject(registry_url):
    """The subject is ``<topic>-value``, for the default and a given topic."""
    make_codec("verdict", registry_url).encode(
        build_verdict(session(), ANSWER, "exit", True, "m", [])
    )
    make_codec("alert", registry_url, topic="tenant-a.alerts").encode(alert())

    subjects = sorted(registry_client(registry_url).get_subjects())
    assert subjects == ["systerns.verdicts-value", "tenant-a.alerts-value"]
    assert topic_subject("t") == "t-value"
    assert topic_subject("t", "key") == "t-key"
    assert DEFAULT_TOPICS["alert"] == "systerns.alerts"


def test_codecs_of_one_url_share_the_registry(registry_url):
    """A producer's and a consumer's codec meet in the same registry."""
    data = make_codec("alert", registry_url).encode(alert())

    assert make_codec("alert", registry_url).decode(data) == alert()


def test_confluent_tools_read_what_the_codec_writes(registry_url):
    """A plain AvroDeserializer (any Confluent consumer) decodes the messages."""
    data = make_codec("alert", registry_url).encode(alert())
    reader = AvroDeserializer(registry_client(registry_url))

    decoded = reader(data, SerializationContext("systerns.alerts", MessageField.VALUE))

    assert decoded == alert()


def test_an_older_writer_schema_is_read_into_the_newest(registry_url):
    """A message of an earlier registered version resolves to the reader schema."""
    client = registry_client(registry_url)
    older = dict(latest("alert").raw)
    older["fields"] = [f for f in older["fields"] if f["name"] != "container_image"]
    schema_id = client.register_schema(
        "systerns.alerts-value", Schema(json.dumps(older), "AVRO")
    )
    record = alert()
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(older), record)
    data = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()

    decoded = make_codec("alert", registry_url).decode(data)

    assert decoded == record | {"container_image": ""}


def test_unknown_schema_id_is_a_schema_error(registry_url):
    """A schema id the registry never issued raises SchemaError, not a client error."""
    codec = make_codec("alert", registry_url)
    data = codec.encode(alert())
    unknown = b"\x00" + (9999).to_bytes(4, "big") + data[5:]

    with pytest.raises(SchemaError) as failed:
        codec.decode(unknown)

    assert failed.value.reason == "unknown_schema"
    assert failed.value.raw == unknown


def test_a_message_from_another_registry_is_unknown(registry_url):
    """The same bytes against a registry that never saw them: unknown schema."""
    data = make_codec("alert", registry_url).encode(alert())

    with pytest.raises(SchemaError) as failed:
        make_codec("alert", f"{registry_url}-other").decode(data)

    assert failed.value.reason == "unknown_schema"


def test_another_subjects_message_is_refused(registry_url):
    """A verdict read as an alert is a wrong-subject SchemaError."""
    verdict = build_verdict(session(), ANSWER, "exit", True, "m", [])
    data = make_codec("verdict", registry_url).encode(verdict)

    with pytest.raises(SchemaError) as failed:
        make_codec("alert", registry_url).decode(data)

    assert failed.value.reason == "wrong_subject"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_confluent_framed"),
        (b"\x00\x00\x00\x01", "not_confluent_framed"),
        (b"\xc3\x01" + b"\x00" * 20, "not_confluent_framed"),
        (b'{"alert_id": "x"}', "not_confluent_framed"),
    ],
)
def test_unframed_input_is_a_schema_error(registry_url, data, reason):
    """Single-object messages, JSON or short bytes are not Confluent-framed."""
    with pytest.raises(SchemaError) as failed:
        make_codec("alert", registry_url).decode(data)

    assert failed.value.reason == reason


def test_a_truncated_datum_is_a_schema_error(registry_url):
    """The right header over a cut datum is bad input, with the bytes kept."""
    codec = make_codec("alert", registry_url)
    data = codec.encode(alert())

    with pytest.raises(SchemaError) as failed:
        codec.decode(data[:20])

    assert failed.value.reason == "bad_datum"


def test_a_record_that_does_not_fit_is_a_schema_error(registry_url):
    """Encoding a record missing fields raises SchemaError."""
    record = alert()
    del record["alert_id"]

    with pytest.raises(SchemaError) as failed:
        make_codec("alert", registry_url).encode(record)

    assert failed.value.reason == "record_does_not_fit"


def test_without_auto_registration_the_schema_must_exist(registry_url):
    """auto_register=False looks the schema up; registered first, it works."""
    codec = make_codec("alert", registry_url, auto_register=False)
    client = registry_client(registry_url)
    with pytest.raises(SchemaRegistryError) as missing:
        codec.encode(alert())
    assert missing.value.http_status_code == 404

    client.register_schema(
        "systerns.alerts-value", Schema(json.dumps(latest("alert").raw), "AVRO")
    )

    data = codec.encode(alert())

    assert codec.decode(data) == alert()


def test_unknown_subject_fails_early():
    """A subject without schema files fails for both codecs."""
    for url in (None, "mock://unused"):
        with pytest.raises(SchemaError):
            make_codec("no_such_subject", url)


def test_mock_urls_need_new_client_not_the_constructor():
    """Why registry_client calls new_client: only it maps mock:// to memory."""
    made = SchemaRegistryClient({"url": "mock://probe"})
    mock = SchemaRegistryClient.new_client({"url": "mock://probe"})

    assert type(made) is SchemaRegistryClient
    assert type(mock).__name__ == "MockSchemaRegistryClient"
    assert type(registry_client("mock://probe-2")) is type(mock)
    assert RegistryCodec("alert", mock, topic="t").registry_subject == "t-value"


def test_without_a_registry_confluent_kafka_is_not_imported():
    """The single-object path needs none of the registry client's extras."""
    code = (
        "import sys; from systerns.schemas.registry import make_codec;"
        "make_codec('alert', None);"
        "sys.exit('confluent_kafka' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
