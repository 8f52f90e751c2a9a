"""Codecs for the Confluent Schema Registry wire format, or single-object encoding.

``make_codec`` picks the encoding of a subject's messages:

* no registry URL: ``systerns.schemas.codec.Codec``, Avro single-object
  encoding (``C3 01`` + 8-byte fingerprint + datum), no service needed;
* a registry URL: ``RegistryCodec``, confluent-kafka's ``AvroSerializer`` /
  ``AvroDeserializer`` (magic byte ``00`` + 4-byte big-endian schema id +
  datum), with the same ``.avsc`` files (``latest(subject).raw``) and the
  topic-name subject strategy (``<topic>-value``), so tools that expect
  Confluent framing (ksqlDB, Kafka Connect, Flink) read the topics.

A ``mock://<name>`` URL gives confluent-kafka's in-memory registry, one per
name in this process, for tests. The registry client needs the extra of
confluent-kafka named ``avro`` (``httpx2``, ``authlib``, ``cachetools``); it
is imported only when a URL is given.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from systerns.core.errors import SchemaError
from systerns.core.settings import Settings
from systerns.schemas.codec import Codec, latest

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = structlog.get_logger(__name__)

#: First byte of every Confluent-framed message.
CONFLUENT_MAGIC = 0
_HEADER_BYTES = 5
_MAX_DETAIL_CHARS = 300

_DEFAULTS = Settings()
#: Topic of each subject when the caller names none (the settings' defaults).
DEFAULT_TOPICS = {
    "event_batch": _DEFAULTS.events_topic,
    "verdict": _DEFAULTS.verdicts_topic,
    "alert": _DEFAULTS.alerts_topic,
    "dead_letter": _DEFAULTS.deadletter_topic,
}

_clients: dict[str, SchemaRegistryClient] = {}
_clients_lock = threading.Lock()


class RecordCodec(Protocol):
    """What the pipeline needs of a codec: records to bytes and back."""

    def encode(self, record: dict[str, Any]) -> bytes:
        """Serialize a record; raises ``SchemaError`` when it does not fit."""
        ...

    def decode(self, data: bytes) -> dict[str, Any]:
        """Deserialize a message; raises ``SchemaError`` when it cannot."""
        ...


def topic_subject(topic: str, field: str = "value") -> str:
    """The registry subject of a topic's values (or keys): ``<topic>-<field>``."""
    return f"{topic}-{field}"


def registry_client(
    url: str, conf: dict[str, Any] | None = None
) -> SchemaRegistryClient:
    """The process's registry client for a URL, made on first use.

    One client per URL keeps one schema cache, and makes every ``mock://``
    codec of a name share one in-memory registry.

    Args:
        url: the registry's URL, or ``mock://<name>``.
        conf: further client settings (``basic.auth.user.info`` ...), used
            when the client is made.
    """
    from confluent_kafka.schema_registry import SchemaRegistryClient

    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            # new_client, not the constructor: only it maps mock:// to the
            # in-memory registry.
            client = SchemaRegistryClient.new_client({"url": url} | (conf or {}))
            _clients[url] = client
        return client


def _full_name(schema: Any) -> str:
    """The full name of a record schema ("" for anything else)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return ""
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


class RegistryCodec:
    """Encodes and decodes one subject in Confluent Schema Registry framing.

    Args:
        subject: one of ``systerns.schemas.codec.SUBJECTS``.
        client: the registry client.
        topic: the topic the messages go to; names the registry subject.
        auto_register: register the schema on first encode; when False it
            must already be registered under the topic's subject.
    """

    def __init__(
        self,
        subject: str,
        client: SchemaRegistryClient,
        *,
        topic: str,
        auto_register: bool = True,
    ) -> None:
        from confluent_kafka.schema_registry import topic_subject_name_strategy
        from confluent_kafka.schema_registry.avro import (
            AvroDeserializer,
            AvroSerializer,
        )
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.subject = subject
        self.topic = topic
        self.registry_subject = topic_subject(topic)
        self._client = client
        self._record_name = _full_name(latest(subject).raw)
        schema_str = json.dumps(latest(subject).raw)
        strategy = {"subject.name.strategy": topic_subject_name_strategy}
        self._serializer = AvroSerializer(
            client, schema_str, conf=strategy | {"auto.register.schemas": auto_register}
        )
        self._deserializer = AvroDeserializer(client, schema_str, conf=strategy)
        self._context = SerializationContext(topic, MessageField.VALUE)

    def encode(self, record: dict[str, Any]) -> bytes:
        """Serialize a record behind the magic byte and its schema id.

        Raises:
            SchemaError: the record does not fit the schema.
            SchemaRegistryError: the registry failed, or (without
                auto-registration) does not know the schema.
        """
        from confluent_kafka.serialization import SerializationError

        try:
            data = self._serializer(record, self._context)
        except (
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            SerializationError,
        ) as exc:
            detail = f"{self.subject}: {exc}"[:_MAX_DETAIL_CHARS]
            raise SchemaError("record_does_not_fit", detail) from exc
        if data is None:
            raise SchemaError("record_does_not_fit", f"{self.subject}: no record")
        return bytes(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        """Deserialize a Confluent-framed message into the newest schema.

        Raises:
            SchemaError: not Confluent-framed (``not_confluent_framed``), a
                schema id the registry does not know (``unknown_schema``), a
                writer schema of another record (``wrong_subject``), or a datum
                that does not match (``bad_datum``).
            SchemaRegistryError: the registry failed otherwise (not the
                message's fault, so not dead-lettered).
        """
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if (
            not isinstance(data, bytes | bytearray)
            or len(data) <= _HEADER_BYTES
            or data[0] != CONFLUENT_MAGIC
        ):
            raise SchemaError(
                "not_confluent_framed",
                "missing 00 + schema id header",
                bytes(data or b""),
            )
        schema_id = int.from_bytes(data[1:_HEADER_BYTES], "big")
        try:
            writer = self._client.get_schema(schema_id)
            writer_name = _full_name(json.loads(writer.schema_str or "null"))
            if writer_name != self._record_name:
                raise SchemaError(
                    "wrong_subject", f"{writer_name} on {self.subject}", bytes(data)
                )
            record = self._deserializer(bytes(data), self._context)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SchemaError(
                    "unknown_schema", f"schema id {schema_id}", bytes(data)
                ) from exc
            raise
        except SchemaError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
            detail = f"{type(exc).__name__}: {exc}"[:_MAX_DETAIL_CHARS]
            raise SchemaError("bad_datum", detail, bytes(data)) from exc
        if not isinstance(record, dict):
            raise SchemaError("bad_datum", f"{self.subject}: not a record", bytes(data))
        return record


def make_codec(
    subject: str,
    registry_url: str | None,
    *,
    topic: str | None = None,
    auto_register: bool = True,
    registry_conf: dict[str, Any] | None = None,
) -> RecordCodec:
    """The codec of a subject: Confluent framing with a registry, else single-object.

    Args:
        subject: one of ``systerns.schemas.codec.SUBJECTS``.
        registry_url: the Schema Registry URL; None or "" for single-object
            encoding.
        topic: the topic the messages go to (names the registry subject);
            the subject's default topic when None.
        auto_register: with a registry, register the schema on first encode.
        registry_conf: further registry client settings (credentials ...).

    Raises:
        SchemaError: an unknown subject.
    """
    latest(subject)  # fails early on an unknown subject, whichever the codec
    if not registry_url:
        return Codec(subject)
    topic = topic or DEFAULT_TOPICS.get(subject, subject)
    codec = RegistryCodec(
        subject,
        registry_client(registry_url, registry_conf),
        topic=topic,
        auto_register=auto_register,
    )
    log.info(
        "registry_codec_ready",
        subject=subject,
        topic=topic,
        registry_subject=codec.registry_subject,
        auto_register=auto_register,
    )
    return codec
