"""Publishes event batches and dead letters to Kafka with confluent-kafka.

Idempotent, ``acks=all``, compressed, with a bounded local queue. Keys are the
process key (``host/container/pid``) hashed with murmur2 like the Java client
and the worker's aiokafka, so one process always lands on one partition and the
worker's table changelogs line up with it. SIGTERM and SIGINT stop reading and
flush what is queued; the final account is returned and printed.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import structlog
from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter

from systerns.core.errors import InputError, SchemaError
from systerns.core.events import EventBatch
from systerns.core.settings import Settings
from systerns.schemas.codec import Codec
from systerns.schemas.records import batch_to_record

log = structlog.get_logger(__name__)
MAX_RAW_BYTES = 64 * 1024

SENT = Counter("systerns_collector_events_sent_total", "Syscall events queued")
DELIVERED = Counter("systerns_collector_events_delivered_total",
                    "Syscall events acknowledged by the brokers")
FAILED = Counter("systerns_collector_events_failed_total",
                 "Syscall events whose delivery failed")
DEAD = Counter("systerns_collector_dead_letters_total", "Records dead-lettered",
               ["reason"])
QUEUE_FULL = Counter("systerns_collector_queue_full_waits_total",
                     "Waits on the bounded producer queue")


@dataclass(slots=True)
class PublishStats:
    """The collector's account: every event is produced, failed or dead-lettered."""

    batches_sent: int = 0
    events_sent: int = 0
    batches_delivered: int = 0
    events_delivered: int = 0
    delivery_errors: int = 0
    events_failed: int = 0
    dead_letters: int = 0
    queue_full_waits: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class Publisher:
    """Sends batches to the events topic and bad input to the dead letters."""

    def __init__(self, settings: Settings, *, extra: dict | None = None) -> None:
        self.settings = settings
        conf = settings.kafka_config() | {
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": settings.queue_max_messages,
            "queue.buffering.max.kbytes": 262_144,
            "message.max.bytes": 4_000_000,
            "message.timeout.ms": 120_000,
            "client.id": f"systerns-collector-{settings.host}",
        } | (extra or {})
        self.producer = Producer(conf)
        self.events_codec = Codec("event_batch")
        self.dlq_codec = Codec("dead_letter")
        self.stats = PublishStats()
        self.stopping = threading.Event()

    def _on_delivery(self, n_events: int, dead: bool):
        def cb(err, msg) -> None:
            if err is not None:
                self.stats.delivery_errors += 1
                self.stats.events_failed += n_events
                FAILED.inc(n_events)
                log.error("delivery_failed", topic=msg.topic(), error=str(err))
            elif not dead:
                self.stats.batches_delivered += 1
                self.stats.events_delivered += n_events
                DELIVERED.inc(n_events)
        return cb

    def _produce(self, topic: str, key: bytes | None, value: bytes, cb) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=cb)
                break
            except BufferError:
                # Bounded queue full: wait for deliveries instead of dropping.
                self.stats.queue_full_waits += 1
                QUEUE_FULL.inc()
                self.producer.poll(0.1)
        self.producer.poll(0)

    def send(self, batch: EventBatch) -> None:
        """Queue one batch; blocks while the bounded queue is full.

        A batch that does not fit the schema is dead-lettered, never dropped.
        """
        try:
            value = self.events_codec.encode(batch_to_record(batch))
        except SchemaError as exc:
            exc.raw = repr(batch)[:MAX_RAW_BYTES].encode("utf-8", "replace")
            self.dead_letter(exc, stage="collector", source=batch.process.key)
            return
        self._produce(self.settings.events_topic, batch.process.key.encode(), value,
                      self._on_delivery(len(batch), False))
        self.stats.batches_sent += 1
        self.stats.events_sent += len(batch)
        SENT.inc(len(batch))

    def dead_letter(self, err: InputError, *, stage: str, source: str) -> None:
        """Record bad input with its reason on the dead-letter topic."""
        raw = err.raw if isinstance(err.raw, bytes) else str(err.raw).encode(
            "utf-8", "replace")
        rec = {"stage": stage, "reason": err.reason, "detail": err.detail[:1000],
               "source": source[:1000], "raw": raw[:MAX_RAW_BYTES],
               "ts_ms": int(time.time() * 1000)}
        self._produce(self.settings.deadletter_topic, None, self.dlq_codec.encode(rec),
                      self._on_delivery(0, True))
        self.stats.dead_letters += 1
        DEAD.labels(err.reason).inc()
        self.stats.reasons[err.reason] = self.stats.reasons.get(err.reason, 0) + 1

    def publish(self, items: Iterable[EventBatch | InputError], *, source: str) -> None:
        """Send every batch and dead-letter every error, until done or stopped."""
        for item in items:
            if isinstance(item, InputError):
                self.dead_letter(item, stage="collector", source=source)
            else:
                self.send(item)
            if self.stopping.is_set():
                log.warning("publish_interrupted", source=source)
                break

    def close(self, timeout_s: float = 30.0) -> PublishStats:
        """Flush queued messages; what is still queued after the timeout failed.

        Raises:
            KafkaException: never; delivery failures are counted instead.
        """
        remaining = self.producer.flush(timeout_s)
        if remaining:
            log.error("flush_incomplete", remaining=remaining)
        log.info("collector_done", **self.stats.as_dict())
        return self.stats

    def install_signal_handlers(self) -> None:
        """Stop reading on SIGTERM/SIGINT; ``close`` then flushes the queue."""
        def stop(signum, _frame) -> None:
            log.warning("signal_received", signal=signal.Signals(signum).name)
            self.stopping.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


__all__ = ["KafkaException", "PublishStats", "Publisher"]
