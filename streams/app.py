"""The Faust worker: events in, sessions in tables, verdicts and alerts out.

Topology (all keyed by process key ``host/container/pid`` so co-partitioned):

    systerns.events ──► on_events ──► sessions table (changelog) ──► judge queue
    systerns-ticks  ──► on_tick (idle sweep of the partition)     ──► judge queue
    judge queue ──► model (gRPC, batched) ──► systerns.verdicts, systerns.alerts

A tick topic with the events topic's partition count carries periodic ticks so
idle sessions of a quiet partition are swept inside that partition's stream,
which is where Faust lets a table change. The session logic is
``systerns.core``; this module only wires it to Kafka.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from concurrent.futures import ThreadPoolExecutor

import faust
import faust.streams
import orjson
import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Counter, Gauge, start_http_server

from systerns.core.detector import Detector, Outcome
from systerns.core.events import EventBatch
from systerns.core.errors import InputError, ModelError, ModelUnavailableError
from systerns.core.sessions import Judgement, Sessionizer, SessionPolicy
from systerns.core.settings import Settings
from systerns.core.suppression import Suppressor
from systerns.core.verdicts import VerdictPolicy
from systerns.schemas.codec import Codec
from systerns.schemas.records import record_to_batch
from systerns.streams.gaps import Filled, OffsetTracker
from systerns.streams.offsets import watermarks

log = structlog.get_logger(__name__)

EVENTS_IN = Counter("systerns_worker_events_total", "Syscall events consumed")
READINGS_IN = Counter("systerns_worker_cpu_readings_total",
                      "CPU time readings consumed (cpu_time events)")
RECORDS_IN = Counter("systerns_worker_records_total", "Event records consumed")
SESSIONIZED = Counter("systerns_worker_events_sessionized_total",
                      "Syscall events folded into a session")
DEAD_RECORDS = Counter("systerns_worker_records_dead_lettered_total",
                       "Event records dead-lettered", ["reason"])
UNACCOUNTED = Gauge("systerns_worker_unaccounted_records",
                    "Records in minus records sessionized or dead-lettered (0 at rest)")
QUEUED = Gauge("systerns_worker_judgements_queued", "Judgements waiting for the model")
BREAKER = Gauge("systerns_worker_model_breaker_open",
                "1 while the model circuit breaker is open or half-open")
REFETCHED = Counter("systerns_worker_records_refetched_total",
                    "Event records the consumer skipped, read again by offset")
EXPIRED = Counter("systerns_worker_records_expired_total",
                  "Skipped event records that retention deleted before a re-read")
BATCHES_IN = Counter("systerns_worker_batches_total", "Event batches consumed")
DEAD = Counter("systerns_worker_dead_letters_total", "Records dead-lettered", ["reason"])
JUDGED = Counter("systerns_worker_judgements_total", "Sessions judged", ["trigger"])
ALERTS = Counter("systerns_worker_alerts_total", "Alerts emitted", ["reason"])
DUP_ALERTS = Counter("systerns_worker_duplicate_alerts_total",
                     "Alerts with an id already emitted")
SUPPRESSED = Counter("systerns_worker_suppressed_alerts_total",
                     "Alerts merged into an open incident")
REPLAYED = Counter("systerns_worker_records_replayed_total",
                   "Records re-consumed after a restart and already in the state")
OPEN = Gauge("systerns_worker_open_sessions", "Open sessions on this worker")
MODEL_RETRIES = Counter("systerns_worker_model_retries_total", "Model call retries")

TICK_INTERVAL_S = 2.0
#: How often a partition's committed offset is compared with its last folded
#: record (a record skipped with nothing after it shows only there).
TRAILING_CHECK_S = 10.0
#: Event records folded per agent step at most, and how long a step waits for
#: more before it folds what it has (the latency it adds to a quiet stream).
TAKE_RECORDS = 256
TAKE_WITHIN_S = 0.05
JUDGE_BATCH = 64
JUDGE_WAIT_S = 0.05
MAX_SEEN_ALERTS = 100_000
MAX_BACKOFF_S = 10.0
#: Ticks and done marks are read within seconds; an hour covers any restart.
TICK_RETENTION_MS = 3_600_000
#: Key of the tick-topic message saying a closed session's verdict is out.
DONE_KEY = b"done"


def _enter_event(event: faust.types.EventT) -> None:
    """Make ``event`` the current event of this task.

    Faust writes a table's changelog to the partition of the current event.
    An agent that takes records in steps (``Stream.take_events``) runs in a
    task where none is set, so each write group sets the event of its
    partition, the way Faust's own stream iteration does.
    """
    faust.streams._current_event.set(weakref.ref(event))  # noqa: SLF001


class CircuitBreaker:
    """Stops calling a failing model server, then probes it after a cooldown.

    Closed: calls go through. After ``failures`` consecutive failures it opens:
    no call until ``cooldown_s`` has passed, then one probe (half-open); a
    success closes it, a failure opens it for another cooldown.

    Args:
        failures: consecutive failures that open the breaker.
        cooldown_s: seconds the breaker stays open before a probe.
        clock: monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, failures: int = 5, cooldown_s: float = 5.0,
                 clock=time.monotonic) -> None:
        self.failures = max(1, failures)
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.opened_total = 0

    def wait_s(self) -> float:
        """Seconds until a call may go out (0 when closed or due for a probe)."""
        if self.state != "open":
            return 0.0
        left = self.opened_at + self.cooldown_s - self.clock()
        if left <= 0:
            self.state = "half_open"
            log.info("model_breaker_half_open")
            return 0.0
        return left

    def success(self) -> None:
        """Record a successful call: the breaker closes."""
        if self.state != "closed":
            log.info("model_breaker_closed", after_failures=self.consecutive)
        self.state, self.consecutive = "closed", 0
        BREAKER.set(0)

    def failure(self) -> None:
        """Record a failed call; opens the breaker past the threshold or on a probe."""
        self.consecutive += 1
        if self.state == "half_open" or (
                self.state == "closed" and self.consecutive >= self.failures):
            self.state, self.opened_at = "open", self.clock()
            self.opened_total += 1
            BREAKER.set(1)
            log.warning("model_breaker_open", failures=self.consecutive,
                        cooldown_s=self.cooldown_s)


INCIDENT_PREFIX = "incident/"


class IncidentState(dict):
    """The suppressor's incidents, remembering which keys changed since a flush.

    The worker writes changed incidents to the alert-index topic after the alert
    that changed them, so a restarted worker, or the one that takes a partition
    over, continues the open incidents instead of opening new ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dirty: set[str] = set()

    def __setitem__(self, key: str, value: dict) -> None:
        super().__setitem__(key, value)
        self.dirty.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.dirty.add(key)

    def pop(self, key: str, *default):  # type: ignore[override]
        if key in self:
            self.dirty.add(key)
        return super().pop(key, *default)

    def merge(self, key: str, raw: bytes | None) -> None:
        """Apply an incident read from the topic; the most recently seen wins."""
        if raw is None:
            super().pop(key, None)
            return
        try:
            record = orjson.loads(raw)
            last = float(record["last_seen_s"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("incident_record_unreadable", key=key[:200])
            return
        current = self.get(key)
        if current is None or last >= float(current.get("last_seen_s", 0.0)):
            super().__setitem__(key, record)

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """Index-topic messages for the keys changed since the last call."""
        out = []
        for key in self.dirty:
            record = self.get(key)
            out.append(((INCIDENT_PREFIX + key).encode(),
                        None if record is None else orjson.dumps(record)))
        self.dirty.clear()
        return out


class AlertIndex:
    """Alert ids already emitted, shared by restarts and by every worker of a group.

    The ids live on a compacted topic (key = alert id). A thread reads it from
    the beginning and keeps tailing it, so a restarted worker, or the worker that
    takes over a partition, knows what its predecessors emitted. The worker checks
    ``seen`` before it sends an alert and records the id right after.

    XXX(#4): the alert and its index entry are two messages, not a transaction;
    a crash between the two sends can still repeat that one alert after a
    restart. Faust's transactions (processing_guarantee="exactly_once") would
    close it, at the cost of a producer per partition.
    """

    def __init__(self, settings: Settings, topic: str, max_ids: int,
                 incidents: IncidentState | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.max_ids = max_ids
        self.ids: OrderedDict[str, None] = OrderedDict()
        self.arrived: deque[str] = deque()
        #: Open incidents, also kept on the topic under ``incident/<key>``.
        self.incidents = incidents if incidents is not None else IncidentState()
        self.arrived_incidents: deque[tuple[str, bytes | None]] = deque()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.loaded = 0

    def start(self) -> None:
        """Start the thread that loads, then tails, the index topic."""
        threading.Thread(target=self._run, name="alert-index", daemon=True).start()

    def _run(self) -> None:
        try:
            # The topic itself is made before the worker starts
            # (ensure_internal_topics).
            consumer = Consumer(self.settings.kafka_config() | {
                "group.id": f"{self.topic}-reader", "enable.auto.commit": False,
                "log_level": 0})
            tp = TopicPartition(self.topic, 0, 0)
            consumer.assign([tp])
            high = watermarks(consumer, tp.topic, tp.partition)[1]
        except Exception as exc:  # noqa: BLE001 - dedup degrades to memory, logged
            log.error("alert_index_unavailable", topic=self.topic, error=str(exc))
            self.ready.set()
            return
        if high <= 0:
            log.info("alert_index_loaded", topic=self.topic, ids=0)
            self.ready.set()
        while not self.stopping.is_set():
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            key = msg.key().decode("utf-8", "replace") if msg.key() else ""
            if key.startswith(INCIDENT_PREFIX):
                self.arrived_incidents.append((key[len(INCIDENT_PREFIX):],
                                               msg.value()))
            elif key:
                self.arrived.append(key)
                self.loaded += 1
            if not self.ready.is_set() and msg.offset() >= high - 1:
                log.info("alert_index_loaded", topic=self.topic, ids=self.loaded)
                self.ready.set()
        consumer.close()

    def seen(self, alert_id: str) -> bool:
        """Whether this alert id was emitted already (by any worker, any run)."""
        while self.arrived:
            self.add(self.arrived.popleft())
        while self.arrived_incidents:
            self.incidents.merge(*self.arrived_incidents.popleft())
        return alert_id in self.ids

    def add(self, alert_id: str) -> None:
        """Remember an id locally (the caller also writes it to the topic)."""
        self.ids[alert_id] = None
        self.ids.move_to_end(alert_id)
        while len(self.ids) > self.max_ids:
            self.ids.popitem(last=False)


def events_partitions(settings: Settings, default: int = 6) -> int:
    """Partition count of the events topic (the tables must match it)."""
    try:
        md = AdminClient(settings.kafka_config() | {"log_level": 0}).list_topics(
            settings.events_topic, timeout=10)
        topic = md.topics.get(settings.events_topic)
        if topic is not None and topic.error is None and topic.partitions:
            return len(topic.partitions)
    except Exception as exc:  # noqa: BLE001 - fall back, logged
        log.warning("partitions_lookup_failed", error=str(exc))
    return default


def ticks_topic(settings: Settings) -> str:
    """The worker group's tick topic (ticks and ``done`` marks)."""
    return f"{settings.worker_id}-ticks"


def alert_index_topic(settings: Settings) -> str:
    """The worker group's compacted topic of emitted alert ids and incidents."""
    return f"{settings.worker_id}-alert-index"


def ensure_internal_topics(settings: Settings, partitions: int,
                           timeout_s: float = 60.0) -> None:
    """Create the worker group's internal topics and wait until they are visible.

    Faust creates them itself at start, but two workers starting together race:
    the one whose metadata lacks a topic the other just created leaves it out
    of the group's assignment ("Ignoring missing topic"), and then nobody reads
    the tick topic or recovers a changelog. Created here, before any worker
    joins, every member sees the same topics.

    Raises:
        KafkaException: a topic could not be created.
        TimeoutError: the topics did not show in the metadata in time.
    """
    app_id = settings.worker_id
    compact = {"cleanup.policy": "compact"}
    wanted = {
        f"{app_id}-sessions-changelog": (partitions, compact),
        f"{app_id}-judging-changelog": (partitions, compact),
        ticks_topic(settings): (partitions, {"retention.ms": str(TICK_RETENTION_MS)}),
        f"{app_id}-__assignor-__leader": (1, {}),
        alert_index_topic(settings): (1, compact),
    }
    admin = AdminClient(settings.kafka_config() | {"log_level": 0})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n,
                  replication_factor=settings.internal_replication_factor,
                  config=config) for name, (n, config) in wanted.items()])
    for fut in futures.values():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=10).topics
        missing = [name for name, (n, _c) in wanted.items()
                   if name not in topics or topics[name].error is not None
                   or len(topics[name].partitions) != n]
        if not missing:
            log.info("internal_topics_ready", topics=len(wanted))
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"internal topics not visible: {missing}")
        time.sleep(0.5)


def default_model_client(settings: Settings):
    """The gRPC PredictionService client named by the settings."""
    from systerns.serving.client import ModelClient

    return ModelClient(settings.model_target, model_name=settings.model_name,
                       version=settings.model_version or None,
                       timeout_s=settings.model_timeout_s)


def create_app(settings: Settings, *, model=None,
               session_policy: SessionPolicy | None = None) -> faust.App:
    """Build the worker's Faust app.

    Args:
        settings: the worker's settings.
        model: a model client; the gRPC client of the settings when None.
        session_policy: when sessions are judged.
    """
    partitions = events_partitions(settings)
    ensure_internal_topics(settings, partitions)
    broker = ";".join(f"kafka://{b}" for b in settings.bootstrap_servers.split(","))
    data_dir = Path(os.environ.get("SYSTERNS_DATA_DIR", "var/faust"))
    data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_id,
        # Faust keeps a small data folder per app id; keep it out of the tree.
        datadir=str(data_dir / "{conf.id}"),
        broker=broker,
        store="memory://",
        topic_partitions=partitions,
        topic_replication_factor=settings.internal_replication_factor,
        producer_acks=-1,
        web_enabled=False,
        broker_credentials=_credentials(settings),
        table_cleanup_interval=30.0,
        # No standby copies: a partition that moves is recovered from its
        # changelog in full. A standby could promote a copy that missed the
        # last writes of the worker that left (seen once as one lost record in
        # the rebalance test), and the memory store keeps nothing to speed up.
        table_standby_replicas=0,
        # Every topic of ours carries bytes (Avro, or orjson for table values);
        # the app-wide default also covers the changelog topics on recovery.
        key_serializer="raw",
        value_serializer="raw",
        # A crashed worker's partitions move after this long, not Kafka's minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    events = app.topic(settings.events_topic, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw",
                       partitions=partitions)
    ticks = app.topic(ticks_topic(settings), key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw",
                      partitions=partitions, internal=True)
    verdicts = app.topic(settings.verdicts_topic, key_serializer="raw",
                         value_serializer="raw")
    alerts = app.topic(settings.alerts_topic, key_serializer="raw",
                       value_serializer="raw")
    dead = app.topic(settings.deadletter_topic, key_serializer="raw",
                     value_serializer="raw")
    sessions = app.Table("sessions", default=None, partitions=partitions,
                         key_type=bytes, value_type=bytes,
                         help="open sessions by process key")
    # Closed sessions stay here until their final verdict is on the verdicts
    # topic, so a worker that dies while they wait for the model (an outage, a
    # full queue) hands them to its successor instead of losing them.
    judging = app.Table("judging", default=None, partitions=partitions,
                        key_type=bytes, value_type=bytes,
                        help="closed sessions waiting for their final verdict")

    codec = Codec("event_batch")
    verdict_codec, dlq_codec = Codec("verdict"), Codec("dead_letter")
    if settings.schema_registry_url:
        from systerns.schemas.registry import make_codec

        alert_codec = make_codec("alert", settings.schema_registry_url,
                                 topic=settings.alerts_topic)
    else:
        alert_codec = Codec("alert")
    # Incidents are saved on the alert-index topic, so open ones outlive a
    # restart and move with partitions (IncidentState, AlertIndex).
    incidents = IncidentState()
    suppressor = Suppressor(incidents, window_s=settings.suppress_window_s)
    webhook = None
    if settings.webhook_url:
        from systerns.streams.sinks import WebhookSink

        def webhook_dead(failure) -> None:
            rec = failure.to_dead_letter()
            asyncio.get_event_loop().call_soon_threadsafe(
                lambda: asyncio.ensure_future(dead.send(value=dlq_codec.encode(rec))))
            totals["dead_letters"] += 1

        webhook = WebhookSink(settings.webhook_url, fmt=settings.webhook_format,
                              on_dead_letter=webhook_dead)
    store = _JsonTable(sessions, partitions)
    sessionizer = Sessionizer(store, session_policy or SessionPolicy())
    detector = Detector(model if model is not None else default_model_client(settings),
                        settings.model_name,
                        VerdictPolicy(malicious_threshold=settings.malicious_threshold))
    # Bounded: a full queue blocks the events agent (back-pressure on the
    # consumer), so judgements wait for the model instead of being dropped.
    pending: asyncio.Queue[Judgement] = asyncio.Queue(maxsize=settings.judge_queue_max)
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
    index_topic = app.topic(alert_index_topic(settings), key_serializer="raw",
                            value_serializer="raw")
    index = AlertIndex(settings, alert_index_topic(settings), MAX_SEEN_ALERTS,
                       incidents)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model")
    totals = {"records": 0, "events": 0, "batches": 0, "events_sessionized": 0,
              "records_dead_lettered": 0, "events_dead_lettered": 0,
              "dead_letters": 0, "judgements": 0, "verdicts": 0, "alerts": 0,
              "duplicate_alerts": 0, "suppressed": 0, "model_retries": 0,
              "breaker_opened": 0, "queued_peak": 0, "records_replayed": 0,
              "events_replayed": 0, "records_refetched": 0, "records_expired": 0,
              "cpu_readings": 0}
    app.systerns_totals = totals  # type: ignore[attr-defined]
    app.systerns_breaker = breaker  # type: ignore[attr-defined]

    async def send_dead(reason: str, detail: str, source: str, raw: bytes) -> None:
        rec = {"stage": "worker", "reason": reason, "detail": detail[:1000],
               "source": source, "raw": bytes(raw or b"")[:65536],
               "ts_ms": int(time.time() * 1000)}
        await dead.send(value=dlq_codec.encode(rec))
        DEAD.labels(reason).inc()
        totals["dead_letters"] += 1

    async def dead_record(reason: str, detail: str, where: str, raw: bytes,
                          n_events: int = 0) -> None:
        await send_dead(reason, detail, where, raw)
        DEAD_RECORDS.labels(reason).inc()
        totals["records_dead_lettered"] += 1
        totals["events_dead_lettered"] += n_events
        UNACCOUNTED.set(unaccounted(totals))

    awaiting = _JsonTable(judging)
    # Where each events partition continues, to find records Faust skipped.
    tracker = OffsetTracker(settings.events_topic, settings.kafka_config(),
                            settings.worker_id)
    trailing_checked: dict[int, float] = {}

    @app.on_partitions_assigned.connect
    async def partitions_assigned(_app, assigned, **_kwargs) -> None:
        tracker.keep_only(tp.partition for tp in assigned
                          if tp.topic == settings.events_topic)

    @sessions.on_recover
    async def sessions_recovered() -> None:
        store.recovered()

    @judging.on_recover
    async def judging_recovered() -> None:
        awaiting.recovered()

    # Session ids of final judgements queued or being judged by this process;
    # a session id leaves the set when its ``done`` mark comes back on the tick
    # topic, in the same step that deletes it from the ``judging`` table.
    inflight: set[str] = set()

    def keep_final(judgements: list[Judgement]) -> None:
        """Keep the final judgements in ``judging`` until their verdict is out.

        They also count as in flight from here on, so a tick does not recover
        them while they wait for the queue. Must run inside a stream step (the
        current event is of the sessions' partition): Faust writes a table's
        changelog to that event's partition.
        """
        for j in judgements:
            if j.final:
                sid = j.session["session_id"]
                awaiting[sid] = {"trigger": j.trigger, "session": j.session}
                inflight.add(sid)

    async def enqueue(judgements: list[Judgement], *, recovered: bool = False,
                      kept: bool = False) -> None:
        """Queue judgements for the model; final ones are kept in ``judging`` first.

        Must run inside a stream step (on_events or on_tick): Faust writes a
        table's changelog to the partition of the event being processed.

        Args:
            recovered: the judgements come from ``judging`` (kept already).
            kept: ``keep_final`` has kept them already.
        """
        if recovered:
            inflight.update(j.session["session_id"] for j in judgements if j.final)
        elif not kept:
            keep_final(judgements)
        for j in judgements:
            JUDGED.labels(j.trigger).inc()
            totals["judgements"] += 1
            await pending.put(j)
            QUEUED.set(pending.qsize())
            totals["queued_peak"] = max(totals["queued_peak"], pending.qsize())

    @app.agent(events, name="systerns.on_events")
    async def on_events(stream):
        # Records come in steps of up to TAKE_RECORDS: a step folds them all,
        # then writes each session it changed once, instead of once per record.
        async for taken in stream.take_events(TAKE_RECORDS, within=TAKE_WITHIN_S):
            await fold_step([(e.message.partition, e.message.offset, e.value, e)
                             for e in taken])

    def to_batch(value: bytes) -> EventBatch:
        return record_to_batch(codec.decode(value))

    async def fold_step(records: list) -> None:
        """Fill the step's offset gaps (gaps.py), then fold its records."""
        if tracker.check_needed(records):
            backoff_s = 0.5
            while True:
                try:
                    # Not awaited: see gaps.py.
                    filled = tracker.fill(records)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, never skipped
                    # The records stay unacknowledged while the broker is away.
                    log.error("refetch_failed", error=str(exc), retry_in_s=backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
            count_refetched(filled)
            records = filled.records
        await fold_and_queue(records)
        tracker.note(records)

    def count_refetched(filled: Filled) -> None:
        if filled.refetched:
            REFETCHED.inc(filled.refetched)
            totals["records_refetched"] += filled.refetched
        if filled.expired:
            EXPIRED.inc(filled.expired)
            totals["records_expired"] += filled.expired

    async def check_trailing(partition: int, event) -> None:
        """Fold records acknowledged past the partition's last folded one, if any."""
        now = time.monotonic()
        if partition not in tracker.next or \
                now - trailing_checked.get(partition, 0.0) < TRAILING_CHECK_S:
            return
        trailing_checked[partition] = now
        try:
            filled = tracker.trailing(partition, event)
        except Exception as exc:  # noqa: BLE001 - checked again next time
            log.warning("trailing_check_failed", partition=partition, error=str(exc))
            return
        count_refetched(filled)
        if filled.records:
            await fold_and_queue(filled.records)
            tracker.note(filled.records)

    async def fold_and_queue(records: list) -> None:
        """Fold one step of event records into the sessions, then queue what is due.

        Faust acks the step's records after this returns, so the committed
        offsets never pass a record whose writes are not on the changelog.
        """
        step = fold_records(
            store, sessionizer,
            records, to_batch, keep=keep_final, enter=_enter_event,
            topic=settings.events_topic)
        RECORDS_IN.inc(step.records)
        BATCHES_IN.inc(step.batches)
        EVENTS_IN.inc(step.events)
        READINGS_IN.inc(step.readings)
        totals["records"] += step.records
        totals["events"] += step.events
        totals["cpu_readings"] += step.readings
        if step.replayed_records:
            REPLAYED.inc(step.replayed_records)
            totals["records_replayed"] += step.replayed_records
            totals["events_replayed"] += step.replayed_events
        totals["batches"] += step.sessionized_records
        totals["events_sessionized"] += step.sessionized_events
        SESSIONIZED.inc(step.sessionized_events)
        for reason, detail, where, raw, size in step.dead:
            if reason == "session_error":
                log.error("sessionize_failed", where=where, error=detail)
            else:
                log.warning("record_dead_lettered", reason=reason, where=where)
            await dead_record(reason, detail, where, raw, size)
        UNACCOUNTED.set(unaccounted(totals))
        for _event, judgements in step.due:
            await enqueue(judgements, kept=True)

    @app.agent(ticks, name="systerns.on_tick")
    async def on_tick(stream):
        async for event in stream.events():
            partition = event.message.partition
            if event.key == DONE_KEY:
                # The final verdict of this session is out: forget the session.
                sid = bytes(event.value).decode()
                if sid in awaiting:
                    del awaiting[sid]
                inflight.discard(sid)
                continue
            await enqueue(recovered_judgements(awaiting, inflight, partition),
                          recovered=True)
            await check_trailing(partition, event)
            # Held and flushed like a step of records: the idle sessions'
            # finals are kept before their closed stubs, mark and tombstones.
            store.hold()
            store.partition = partition
            try:
                due = sessionizer.sweep(time.time_ns(), wall=True,
                                        partition=partition)
                keep_final(due)
            finally:
                store.partition = None
                store.flush()
            OPEN.set(len(store))
            await enqueue(due, kept=True)

    @app.timer(interval=TICK_INTERVAL_S, on_leader=True)
    async def send_ticks() -> None:
        now = str(time.time_ns()).encode()
        for p in range(partitions):
            await ticks.send(key=b"tick", value=now, partition=p)

    async def save_incidents() -> None:
        """Write the incidents changed since the last save to the index topic."""
        for key, value in incidents.changes():
            await index_topic.send(key=key, value=value)

    async def emit(outcome: Outcome) -> None:
        v = outcome.verdict
        await verdicts.send(key=v["session_id"].encode(), value=verdict_codec.encode(v))
        totals["verdicts"] += 1
        for a in outcome.alerts:
            if index.seen(a["alert_id"]):
                DUP_ALERTS.inc()
                totals["duplicate_alerts"] += 1
                continue
            index.add(a["alert_id"])
            incident = suppressor.offer(a, time.time())
            if incident is None:
                # The same process and reason is already an open incident.
                SUPPRESSED.inc()
                totals["suppressed"] += 1
                await index_topic.send(key=a["alert_id"].encode(), value=b"1")
                await save_incidents()
                continue
            a["incident_id"] = incident.incident_id
            await alerts.send(key=a["alert_id"].encode(), value=alert_codec.encode(a))
            # After the alert: a crash in between repeats it, never loses it.
            await index_topic.send(key=a["alert_id"].encode(), value=b"1")
            await save_incidents()
            if webhook is not None:
                asyncio.ensure_future(webhook.asend(a))
            ALERTS.labels(a["reason"]).inc()
            totals["alerts"] += 1
            log.warning("alert", alert_id=a["alert_id"], reason=a["reason"],
                        process=a["process_name"], behaves_like=a["behaves_like"],
                        malicious=round(a["malicious_probability"], 3))

    async def call_model(batch: list[Judgement]) -> list[Outcome]:
        """Judge a batch, waiting out model outages behind the breaker."""
        loop = asyncio.get_running_loop()
        backoff_s = 0.2
        while True:
            wait_s = breaker.wait_s()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            try:
                outcomes = await loop.run_in_executor(executor, detector.judge, batch)
            except ModelUnavailableError as exc:
                # Keep the judgements and retry: no verdict is lost while the
                # model server is away.
                breaker.failure()
                totals["breaker_opened"] = breaker.opened_total
                MODEL_RETRIES.inc()
                totals["model_retries"] += 1
                log.warning("model_unavailable", error=str(exc), retry_in_s=backoff_s,
                            waiting=len(batch) + pending.qsize(),
                            breaker=breaker.state)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                continue
            except ModelError as exc:
                breaker.success()
                log.error("model_failed", error=str(exc), judgements=len(batch))
                for j in batch:
                    await send_dead("model_error", str(exc), j.session["session_id"],
                                    b"")
                return []
            breaker.success()
            return outcomes

    @app.task
    async def judge_loop() -> None:
        loop = asyncio.get_running_loop()
        index.start()
        # Alerts wait until the ids emitted by earlier runs are known.
        await asyncio.to_thread(index.ready.wait, 60)
        while True:
            batch = [await pending.get()]
            deadline = loop.time() + JUDGE_WAIT_S
            while len(batch) < JUDGE_BATCH:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(pending.get(), timeout))
                except TimeoutError:
                    break
            QUEUED.set(pending.qsize())
            for o in await call_model(batch):
                await emit(o)
            # Verdicts (or model_error dead letters) are out for the whole batch.
            for j in batch:
                if j.final:
                    await ticks.send(key=DONE_KEY,
                                     value=j.session["session_id"].encode(),
                                     partition=j.session.get("partition", 0))

    @app.timer(interval=10.0)
    async def report_incidents() -> None:
        updated = suppressor.updates(time.time())
        await save_incidents()
        for inc in updated:
            log.info("incident_updated", incident_id=inc.incident_id, count=inc.count,
                     reason=inc.reason, process=inc.process_name)
            if webhook is not None:
                doc = {"incident_id": inc.incident_id, "count": inc.count,
                       "reason": inc.reason, "host": inc.host,
                       "container_id": inc.container_id,
                       "process_name": inc.process_name,
                       "first_alert_id": inc.first_alert_id,
                       "last_seen_s": inc.last_seen_s}
                asyncio.ensure_future(asyncio.to_thread(
                    webhook.post, doc, alert_id=inc.last_alert_id))

    @app.task
    async def report_start() -> None:
        log.info("worker_started", partitions=partitions, **settings.masked())

    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="0.0.0.0")  # noqa: S104

    return app


@dataclass(slots=True)
class FoldStep:
    """What one agent step did with its records (for the worker's accounts).

    Attributes:
        due: (token of the record, judgements it made due), in record order.
        dead: (reason, detail, where, raw value, events) per record refused.
    """

    records: int = 0
    batches: int = 0
    events: int = 0
    readings: int = 0
    sessionized_records: int = 0
    sessionized_events: int = 0
    replayed_records: int = 0
    replayed_events: int = 0
    due: list[tuple[Any, list[Judgement]]] = field(default_factory=list)
    dead: list[tuple[str, str, str, bytes, int]] = field(default_factory=list)


def fold_records(store: _JsonTable, sessionizer: Sessionizer,
                 records: Sequence[tuple[int, int, bytes, Any]],
                 to_batch: Callable[[bytes], EventBatch], *,
                 keep: Callable[[list[Judgement]], None],
                 enter: Callable[[Any], None], topic: str = "events") -> FoldStep:
    """Fold a step of event records into the sessions; write each changed key once.

    Runs without awaiting, so no other agent sees the held writes. Before the
    writes are flushed, the step's final judgements are kept (``keep``, the
    ``judging`` table): a crash in between judges a session again (verdicts
    are at-least-once), never loses it. A record that may evict a session (the
    store is at its cap) is folded after a flush of everything before it, so
    that, replayed from any prefix of the changelog, the same session is the
    oldest one.

    Args:
        store: the sessions table.
        sessionizer: the sessionizer over ``store``.
        records: (partition, offset, value, token) in consumption order; the
            token is the Faust event, passed to ``enter``.
        to_batch: decodes a value (raises ``InputError``, ``KeyError``,
            ``TypeError`` or ``ValueError`` on bad input).
        keep: keeps final judgements (called with the record's event entered).
        enter: makes a record's event the current one (table writes go to its
            partition).
        topic: for the ``where`` of dead letters.
    """
    out = FoldStep()
    last: dict[int, Any] = {}
    kept = 0
    cap = sessionizer.policy.max_sessions - 1

    def flush(one_record: bool = False) -> None:
        nonlocal kept
        for token, judgements in out.due[kept:]:
            enter(token)
            keep(judgements)
        kept = len(out.due)
        store.flush(lambda partition: enter(last[partition]),
                    stubs_first=one_record)

    store.hold()
    try:
        for partition, offset, value, token in records:
            out.records += 1
            try:
                batch = to_batch(value)
            except InputError as exc:
                out.dead.append((exc.reason, exc.detail,
                                 f"{topic}/{partition}/{offset}", value, 0))
                continue
            except (KeyError, TypeError, ValueError) as exc:
                out.dead.append(("bad_record", str(exc),
                                 f"{topic}/{partition}/{offset}", value, 0))
                continue
            out.batches += 1
            # Syscalls only: CPU readings are counted apart (a session's
            # n_events, which the balance compares with, holds syscalls).
            size = batch.syscall_count()
            out.readings += len(batch) - size
            out.events += size
            if store.already_applied(batch.process.key, partition, offset):
                # Re-consumed after a crash: the changelog holds it already.
                out.replayed_records += 1
                out.replayed_events += size
                continue
            alone = len(store) >= cap
            if alone:
                # The store is full: this record may evict another session.
                flush()
                store.hold()
            last[partition] = token
            store.offset, store.partition = offset, partition
            try:
                judgements = sessionizer.ingest(batch, partition=partition,
                                                wall_ns=time.time_ns())
            except Exception as exc:  # noqa: BLE001 - accounted, never silent
                out.dead.append(("session_error", repr(exc),
                                 f"{topic}/{partition}/{offset}", value, size))
                continue
            finally:
                store.offset = store.partition = None
            out.sessionized_records += 1
            out.sessionized_events += size
            if judgements:
                out.due.append((token, judgements))
            if alone:
                flush(one_record=True)
                store.hold()
    finally:
        flush()
    return out


def recovered_judgements(awaiting, inflight: set[str],
                         partition: int) -> list[Judgement]:
    """Final judgements of ``partition`` kept in ``judging`` but queued by nobody.

    After a crash or a rebalance the table comes back from its changelog while
    the queue that held these judgements is gone: they are judged again here.
    """
    out = []
    for sid, rec in awaiting.items():
        if rec is None or sid in inflight:
            continue
        session = rec["session"]
        if session.get("partition", 0) != partition:
            continue
        log.info("judgement_recovered", session_id=sid, trigger=rec["trigger"])
        out.append(Judgement(session, rec["trigger"], True))
    return out


def unaccounted(totals: dict) -> int:
    """Records consumed but neither sessionized nor dead-lettered (0 at rest)."""
    return (totals["records"] - totals["batches"] - totals["records_dead_lettered"]
            - totals.get("records_replayed", 0))


def balance(totals: dict) -> dict:
    """The worker's account: records in = records sessionized + dead-lettered.

    Events are counted for decodable records: events in = events sessionized +
    events of records dead-lettered after decoding. A record that cannot be
    decoded has no event count; it is accounted as one dead-lettered record.
    """
    return {
        "records_in": totals["records"],
        "records_sessionized": totals["batches"],
        "records_dead_lettered": totals["records_dead_lettered"],
        "events_in": totals["events"],
        "events_sessionized": totals["events_sessionized"],
        "events_dead_lettered": totals["events_dead_lettered"],
        "records_replayed": totals.get("records_replayed", 0),
        "events_replayed": totals.get("events_replayed", 0),
        "cpu_readings_in": totals.get("cpu_readings", 0),
        "unaccounted_records": unaccounted(totals),
        "balanced": unaccounted(totals) == 0 and totals["events"] == (
            totals["events_sessionized"] + totals["events_dead_lettered"]
            + totals.get("events_replayed", 0)),
    }


def _credentials(settings: Settings):
    """Faust broker credentials from the SASL/TLS settings, or None for plaintext."""
    import ssl

    context = None
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_ca_location or None)
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username, password=settings.sasl_password,
            mechanism=settings.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


class _JsonTable:
    """A Faust table of session states as a mapping of ``str`` to ``dict``.

    Values are stored as orjson bytes with the ``raw`` serializer, so deletions
    are plain tombstones that changelog recovery understands. Decoded states are
    cached; the table stays the authority on which keys this worker owns, so
    keys of partitions that moved to another worker are never used.

    Replays are made idempotent with the record offsets: while a record is being
    folded (``offset`` set), every state written is stamped with it, and closing
    a session moves the partition's ``applied`` mark (a reserved key in the same
    table, so in the same changelog partition, after the deletion) up to it.
    After a crash the changelog holds a prefix of these writes, in order, and
    ``already_applied`` tells which re-consumed records that prefix reflects.

    Between ``hold`` and ``flush`` writes stay in memory (every read sees them)
    and ``flush`` writes each changed key once: a state folded from many
    records of one agent step costs one changelog message, not one per record.
    A flush closes a session in three writes: a *closed stub* (``{"closed":
    true, "offset": ...}``, which every read takes for an absent key but which
    still says which records the session had), the partition's ``applied``
    mark, then the tombstone. So every prefix of a flush is a state some
    replay continues exactly: the states and stubs come first (a record they
    reflect is skipped), the mark only once they are all written.
    """

    MARK = "\x00applied/"
    CLOSED = "closed"

    def __init__(self, table, partitions: int = 1) -> None:
        self.table = table
        self.partitions = partitions
        self._cache: dict[str, dict] = {}
        #: Offset of the record being folded, or None outside ``on_events``.
        self.offset: int | None = None
        #: Partition of the record or tick being handled (where held writes go).
        self.partition: int | None = None
        #: Held writes: key -> (changelog partition, state, or a closed stub).
        self._held: dict[str, tuple[int, dict]] | None = None
        #: Sessions the held writes add to the table (negative: remove).
        self._held_size = 0
        #: Keys holding a closed stub in the table (left by a crash mid-flush).
        self._stubs: set[bytes] = set()

    def recovered(self) -> None:
        """Re-read the table after changelog recovery (a start or a rebalance).

        Drops the decoded states (the table is the authority) and finds the
        closed stubs that a crash between a stub and its tombstone left, so
        they are not counted as open sessions.
        """
        self._cache.clear()
        prefix = b'{"%s":' % self.CLOSED.encode()
        self._stubs = {k for k, v in list(self.table.items())
                       if bytes(v).startswith(prefix)}
        if self._stubs:
            log.info("closed_stubs_recovered", stubs=len(self._stubs))

    def already_applied(self, key: str, partition: int, offset: int) -> bool:
        """Whether the record at ``offset`` of ``partition`` is in the state already."""
        state = self._load(key)
        if state is not None and state.get("offset", -1) >= offset:
            return True
        mark = self._load(f"{self.MARK}{partition}")
        return mark is not None and offset <= mark["offset"]

    def _mark(self, partition: int, offset: int) -> None:
        key = f"{self.MARK}{partition}"
        mark = self._load(key)
        if mark is None or offset > mark["offset"]:
            self._cache[key] = {"offset": offset}
            if self._held is not None:
                self._held[key] = (self._held_partition(), {"offset": offset})
                return
            self.table[key.encode()] = orjson.dumps({"offset": offset})

    def hold(self) -> None:
        """Keep writes in memory until ``flush``; reads see them meanwhile."""
        if self._held is None:
            self._held, self._held_size = {}, 0

    def _held_partition(self) -> int:
        if self.partition is None:
            raise RuntimeError("held table write outside a record or tick")
        return self.partition

    def flush(self, enter: Callable[[int], None] | None = None, *,
              stubs_first: bool = False) -> int:
        """Write the held changes; returns how many keys were written.

        Per changelog partition: the states and closed stubs, the ``applied``
        mark, then the tombstones of the stubs.

        Args:
            enter: called with each changelog partition before its writes (the
                worker makes an event of that partition the current one, which
                is where Faust sends a table's changelog).
            stubs_first: the stubs before the states (the held writes are of
                one record that may have evicted another session: a prefix
                that skips the record then has the eviction too).
        """
        held, self._held, self._held_size = self._held, None, 0
        if not held:
            return 0
        groups: dict[int, tuple[list, list, list]] = {}
        for key, (partition, value) in held.items():
            states, stubs, marks = groups.setdefault(partition, ([], [], []))
            if key.startswith(self.MARK):
                marks.append((key, value))
            elif self.CLOSED in value:
                stubs.append((key, value))
            else:
                states.append((key, value))
        table = self.table
        for partition in sorted(groups):
            states, stubs, marks = groups[partition]
            if enter is not None:
                enter(partition)
            # A session opened and closed inside the held writes was never in
            # the table: the mark alone covers its records.
            stubs = [(k, v) for k, v in stubs if k.encode() in table]
            for key, value in (stubs + states if stubs_first else states + stubs):
                table[key.encode()] = orjson.dumps(value)
            for key, value in marks:
                table[key.encode()] = orjson.dumps(value)
            for key, _value in stubs:
                del table[key.encode()]
            if self._stubs:
                self._stubs.difference_update(k.encode() for k, _v in states + stubs)
        return len(held)

    def _load(self, key: str) -> dict | None:
        """The stored value of a key, closed stubs included."""
        held = self._held
        if held is not None and key in held:
            return held[key][1]
        kb = key.encode()
        if kb not in self.table:
            self._cache.pop(key, None)
            return None
        state = self._cache.get(key)
        if state is None:
            state = orjson.loads(self.table[kb])
            self._cache[key] = state
        return state

    def get(self, key: str, default=None):
        state = self._load(key)
        if state is None or self.CLOSED in state:
            return default
        return state

    def __getitem__(self, key: str):
        state = self.get(key)
        if state is None:
            raise KeyError(key)
        return state

    def __setitem__(self, key: str, value: dict) -> None:
        if self.offset is not None and self.offset > value.get("offset", -1):
            value["offset"] = self.offset
        if self._held is not None:
            if key not in self:
                self._held_size += 1
            self._held[key] = (self._held_partition(), value)
            self._cache[key] = value
            return
        self._cache[key] = value
        kb = key.encode()
        self.table[kb] = orjson.dumps(value)
        if self._stubs:
            self._stubs.discard(kb)

    def __delitem__(self, key: str) -> None:
        state = self.get(key)
        if state is None:
            raise KeyError(key)
        done = max(state.get("offset", -1),
                   -1 if self.offset is None else self.offset)
        if self._held is not None:
            self._held[key] = (self._held_partition(),
                               {self.CLOSED: True, "offset": done})
            self._cache.pop(key, None)
            self._held_size -= 1
        else:
            self._cache.pop(key, None)
            del self.table[key.encode()]
        if done >= 0 and "partition" in state:
            self._mark(state["partition"], done)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        # O(partitions), not O(sessions): the store's cap is checked often.
        marks = sum(1 for p in range(self.partitions)
                    if f"{self.MARK}{p}".encode() in self.table)
        return len(self.table) - marks - len(self._stubs) + self._held_size

    def keys(self):
        owned = [k.decode() for k in list(self.table.keys())
                 if not k.startswith(b"\x00")]
        held = self._held
        if held:
            table = self.table
            owned += [k for k in held if not k.startswith(self.MARK)
                      and k.encode() not in table]
        return [k for k in owned if k in self]

    def items(self):
        owned = self.keys()
        if len(self._cache) > 2 * len(owned) + 1000:
            keep = set(owned)
            self._cache = {k: v for k, v in self._cache.items() if k in keep}
        return [(k, self.get(k)) for k in owned]
