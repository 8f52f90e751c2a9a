"""Publishes event batches and dead letters to Kafka with confluent-kafka.

Idempotent, ``acks=all``, compressed, with a bounded local queue. Keys are the
process key (``host/container/pid``) hashed with murmur2 like the Java client
and the worker's aiokafka, so one process always lands on one partition and the
worker's table changelogs line up with it. SIGTERM and SIGINT stop reading and
flush what is queued; the final account is returned and printed.

When the brokers are away, ``SYSTERNS_OUTAGE_POLICY`` decides, and every record
ends up counted under one of its outcomes:

========  =================================================================
block     records never time out; a full local queue blocks reading (bounded
          memory, back-pressure on the source). On SIGTERM what is still
          queued is reported as in flight, what was not queued as unsent.
spill     records the brokers did not take within ``message_timeout_ms`` (or
          that do not fit the full queue) are appended to a spool file capped
          at ``spool_max_bytes``; the spool is replayed when a delivery
          succeeds again and at the next start. Past the cap: dropped, counted.
drop      such records are dropped and counted (``events_dropped``).
========  =================================================================

Balance: ``events_sent + events_replayed == events_delivered + events_failed +
events_dropped + events_spilled + events_in_flight + events_unsent``.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import Counter

from systerns.core.errors import InputError, SchemaError
from systerns.core.events import EventBatch
from systerns.core.redact import redact
from systerns.core.settings import Settings
from systerns.schemas.codec import Codec
from systerns.schemas.records import batch_to_record

log = structlog.get_logger(__name__)
MAX_RAW_BYTES = 64 * 1024

# Events are syscalls and CPU readings (``cpu_time``) alike: the collector
# carries both in its batches and accounts for every one the same way.
SENT = Counter("systerns_collector_events_sent_total", "Events queued")
DELIVERED = Counter("systerns_collector_events_delivered_total",
                    "Events acknowledged by the brokers")
FAILED = Counter("systerns_collector_events_failed_total",
                 "Events whose delivery failed")
DEAD = Counter("systerns_collector_dead_letters_total", "Records dead-lettered",
               ["reason"])
QUEUE_FULL = Counter("systerns_collector_queue_full_waits_total",
                     "Waits on the bounded producer queue")
SPILLED = Counter("systerns_collector_events_spilled_total",
                  "Events written to the spool during an outage")
REPLAYED = Counter("systerns_collector_events_replayed_total",
                   "Events read back from the spool and sent again")
DROPPED = Counter("systerns_collector_events_dropped_total",
                  "Events dropped by the outage policy", ["reason"])
POLICIES = ("block", "spill", "drop")
#: Spool frame header: topic, key (0xFFFFFFFF = no key) and value lengths, events.
_FRAME = struct.Struct(">HIII")
_NO_KEY = 0xFFFFFFFF


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
    events_spilled: int = 0
    events_replayed: int = 0
    events_dropped: int = 0
    events_unsent: int = 0
    events_in_flight: int = 0
    records_spilled: int = 0
    records_replayed: int = 0
    records_dropped: int = 0
    spool_bytes: int = 0
    dropped_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def unaccounted(self) -> int:
        """Events neither delivered, failed, dropped, spilled, queued nor unsent."""
        return (self.events_sent + self.events_replayed - self.events_delivered
                - self.events_failed - self.events_dropped - self.events_spilled
                - self.events_in_flight - self.events_unsent)


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
            # block: a record waits for the brokers as long as it takes (0 =
            # no timeout); spill and drop act once this timeout has passed.
            "message.timeout.ms": (0 if settings.outage_policy == "block"
                                   else settings.message_timeout_ms),
            "client.id": f"systerns-collector-{settings.host}",
        } | (extra or {})
        if settings.outage_policy not in POLICIES:
            raise ValueError(f"SYSTERNS_OUTAGE_POLICY={settings.outage_policy!r} is "
                             f"not one of {', '.join(POLICIES)}")
        self.policy = settings.outage_policy
        self.spool = Path(settings.spool_path)
        self.producer = Producer(conf)
        self.events_codec = Codec("event_batch")
        self.dlq_codec = Codec("dead_letter")
        self.stats = PublishStats()
        self.stopping = threading.Event()
        self._last_spill = 0.0
        self._last_delivery = 0.0
        self._replay_due = self.policy == "spill" and self._spool_size() > 0

    def _on_delivery(self, topic: str, key: bytes | None, value: bytes,
                     n_events: int, dead: bool):
        def cb(err, msg) -> None:
            self.stats.events_in_flight -= n_events
            if err is None:
                self._last_delivery = time.monotonic()
                if self._last_spill and not self._replay_due:
                    # The brokers are back: the spool goes out with the next send.
                    self._replay_due = True
                if not dead:
                    self.stats.batches_delivered += 1
                    self.stats.events_delivered += n_events
                    DELIVERED.inc(n_events)
            elif self.policy != "block" and self._retriable(err):
                self._outage(topic, key, value, n_events, str(err))
            else:
                self.stats.delivery_errors += 1
                self.stats.events_failed += n_events
                FAILED.inc(n_events)
                log.error("delivery_failed", topic=msg.topic(), error=str(err))
        return cb

    @staticmethod
    def _retriable(err) -> bool:
        """Whether a delivery error is an outage (timeout, transport), not a refusal."""
        try:
            return bool(err.retriable()) or err.code() in (
                KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT,
                KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT)
        except AttributeError:
            return False

    def _outage(self, topic: str, key: bytes | None, value: bytes, n_events: int,
                why: str) -> None:
        """Apply the outage policy to one record the brokers did not take."""
        if self.policy == "spill":
            klen = _NO_KEY if key is None else len(key)
            frame = _FRAME.pack(len(topic.encode()), klen, len(value), n_events)
            frame += topic.encode() + (key or b"")
            size = self._spool_size()
            if size + len(frame) + len(value) <= self.settings.spool_max_bytes:
                self.spool.parent.mkdir(parents=True, exist_ok=True)
                with open(self.spool, "ab") as fh:
                    fh.write(frame + value)
                self.stats.events_spilled += n_events
                self.stats.records_spilled += 1
                self.stats.spool_bytes = size + len(frame) + len(value)
                SPILLED.inc(n_events)
                if not self._last_spill:
                    log.warning("outage_spilling", spool=str(self.spool), error=why)
                self._last_spill = time.monotonic()
                return
            why = "spool_full"
        reason = why if why == "spool_full" else "outage"
        self.stats.events_dropped += n_events
        self.stats.records_dropped += 1
        reasons = self.stats.dropped_reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        DROPPED.labels(reason).inc(n_events)
        n = self.stats.records_dropped
        if n in (1, 10, 100) or n % 1000 == 0:
            log.warning("outage_dropping", reason=reason, records=n,
                        dropped=self.stats.events_dropped)

    def _spool_size(self) -> int:
        try:
            return self.spool.stat().st_size
        except OSError:
            return 0

    def replay_spool(self) -> int:
        """Send the spooled records again; returns the events queued from it.

        The spool is renamed first, so records that fail again are spooled anew
        (never lost) and a crash mid-replay leaves the renamed file, which the
        next replay picks up as well.
        """
        self._replay_due = False
        replaying = self.spool.with_suffix(self.spool.suffix + ".replaying")
        if self.spool.exists():
            if replaying.exists():
                with open(replaying, "ab") as out, open(self.spool, "rb") as src:
                    out.write(src.read())
                self.spool.unlink()
            else:
                os.replace(self.spool, replaying)
        if not replaying.exists():
            return 0
        events = 0
        self._last_spill = 0.0
        with open(replaying, "rb") as fh:
            while head := fh.read(_FRAME.size):
                if len(head) < _FRAME.size:
                    log.error("spool_truncated", spool=str(replaying))
                    break
                tlen, klen, vlen, n_events = _FRAME.unpack(head)
                topic = fh.read(tlen).decode()
                key = None if klen == _NO_KEY else fh.read(klen)
                value = fh.read(vlen)
                if len(value) < vlen:
                    log.error("spool_truncated", spool=str(replaying))
                    break
                self._produce(topic, key, value, n_events, n_events == 0)
                self.stats.events_replayed += n_events
                self.stats.records_replayed += 1
                REPLAYED.inc(n_events)
                events += n_events
        replaying.unlink()
        self.stats.spool_bytes = self._spool_size()
        log.info("spool_replayed", events=events, records=self.stats.records_replayed)
        return events

    def _produce(self, topic: str, key: bytes | None, value: bytes, n_events: int,
                 dead: bool) -> bool:
        """Queue one record; returns False when the policy took it instead."""
        cb = self._on_delivery(topic, key, value, n_events, dead)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=cb)
                break
            except BufferError:
                self.stats.queue_full_waits += 1
                QUEUE_FULL.inc()
                if self.policy != "block":
                    # Full queue during an outage: spill or drop now rather
                    # than hold more in memory.
                    self._outage(topic, key, value, n_events, "queue_full")
                    self.producer.poll(0)
                    return False
                if self.stopping.is_set():
                    self.stats.events_unsent += n_events
                    log.warning("blocked_record_unsent", topic=topic, events=n_events)
                    return False
                # Bounded queue full: wait for deliveries instead of dropping.
                self.producer.poll(0.1)
        self.stats.events_in_flight += n_events
        self.producer.poll(0)
        return True

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
        if self._replay_due and time.monotonic() - self._last_spill > 1.0:
            self.replay_spool()
        self._produce(self.settings.events_topic, batch.process.key.encode(), value,
                      len(batch), False)
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
                      0, True)
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
                # A traced command's line is the source: never log its secrets.
                log.warning("publish_interrupted", source=redact(source))
                break

    def close(self, timeout_s: float = 30.0) -> PublishStats:
        """Flush queued messages; what is still queued after the timeout failed.

        Raises:
            KafkaException: never; delivery failures are counted instead.
        """
        if self._replay_due:
            self.replay_spool()
        remaining = self.producer.flush(timeout_s)
        if remaining:
            log.error("flush_incomplete", remaining=remaining,
                      events_in_flight=self.stats.events_in_flight)
        log.info("collector_done", unaccounted=self.stats.unaccounted(),
                 **self.stats.as_dict())
        return self.stats

    def install_signal_handlers(self) -> None:
        """Stop reading on SIGTERM/SIGINT; ``close`` then flushes the queue."""
        def stop(signum, _frame) -> None:
            log.warning("signal_received", signal=signal.Signals(signum).name)
            self.stopping.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


__all__ = ["KafkaException", "PublishStats", "Publisher"]
