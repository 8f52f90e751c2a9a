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
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import faust
import orjson
import structlog
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge, start_http_server

from systerns.core.detector import Detector, Outcome
from systerns.core.errors import InputError, ModelError, ModelUnavailableError
from systerns.core.sessions import Judgement, SessionPolicy, Sessionizer
from systerns.core.settings import Settings
from systerns.core.suppression import Suppressor
from systerns.core.verdicts import VerdictPolicy
from systerns.schemas.codec import Codec
from systerns.schemas.records import record_to_batch

log = structlog.get_logger(__name__)

EVENTS_IN = Counter("systerns_worker_events_total", "Syscall events consumed")
BATCHES_IN = Counter("systerns_worker_batches_total", "Event batches consumed")
DEAD = Counter("systerns_worker_dead_letters_total", "Records dead-lettered", ["reason"])
JUDGED = Counter("systerns_worker_judgements_total", "Sessions judged", ["trigger"])
ALERTS = Counter("systerns_worker_alerts_total", "Alerts emitted", ["reason"])
DUP_ALERTS = Counter("systerns_worker_duplicate_alerts_total",
                     "Alerts with an id already emitted")
SUPPRESSED = Counter("systerns_worker_suppressed_alerts_total",
                     "Alerts merged into an open incident")
OPEN = Gauge("systerns_worker_open_sessions", "Open sessions on this worker")
MODEL_RETRIES = Counter("systerns_worker_model_retries_total", "Model call retries")

TICK_INTERVAL_S = 2.0
JUDGE_BATCH = 64
JUDGE_WAIT_S = 0.05
MAX_SEEN_ALERTS = 100_000


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
    broker = ";".join(f"kafka://{b}" for b in settings.bootstrap_servers.split(","))
    app = faust.App(
        settings.worker_id,
        broker=broker,
        store="memory://",
        topic_partitions=partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        web_enabled=False,
        broker_credentials=_credentials(settings),
        table_cleanup_interval=30.0,
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
    ticks = app.topic(f"{settings.worker_id}-ticks", key_type=bytes, value_type=bytes,
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

    codec = Codec("event_batch")
    verdict_codec, dlq_codec = Codec("verdict"), Codec("dead_letter")
    if settings.schema_registry_url:
        from systerns.schemas.registry import make_codec

        alert_codec = make_codec("alert", settings.schema_registry_url,
                                 topic=settings.alerts_topic)
    else:
        alert_codec = Codec("alert")
    # XXX(#4): incidents live in memory; after a restart an open incident's next
    # alert opens a new one (ids stay deterministic, so consumers can merge).
    suppressor = Suppressor(window_s=settings.suppress_window_s)
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
    sessionizer = Sessionizer(_JsonTable(sessions), session_policy or SessionPolicy())
    detector = Detector(model if model is not None else default_model_client(settings),
                        settings.model_name,
                        VerdictPolicy(malicious_threshold=settings.malicious_threshold))
    pending: asyncio.Queue[Judgement] = asyncio.Queue(maxsize=10_000)
    seen_alerts: OrderedDict[str, int] = OrderedDict()
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model")
    totals = {"events": 0, "batches": 0, "dead_letters": 0, "judgements": 0,
              "verdicts": 0, "alerts": 0, "duplicate_alerts": 0, "suppressed": 0}
    app.systerns_totals = totals  # type: ignore[attr-defined]

    async def send_dead(reason: str, detail: str, source: str, raw: bytes) -> None:
        rec = {"stage": "worker", "reason": reason, "detail": detail[:1000],
               "source": source, "raw": bytes(raw or b"")[:65536],
               "ts_ms": int(time.time() * 1000)}
        await dead.send(value=dlq_codec.encode(rec))
        DEAD.labels(reason).inc()
        totals["dead_letters"] += 1

    async def enqueue(judgements: list[Judgement]) -> None:
        for j in judgements:
            JUDGED.labels(j.trigger).inc()
            totals["judgements"] += 1
            await pending.put(j)

    @app.agent(events, name="systerns.on_events")
    async def on_events(stream):
        async for event in stream.events():
            msg = event.message
            where = f"{msg.topic}/{msg.partition}/{msg.offset}"
            try:
                batch = record_to_batch(codec.decode(event.value))
            except InputError as exc:
                log.warning("record_dead_lettered", reason=exc.reason, where=where)
                await send_dead(exc.reason, exc.detail, where, event.value)
                continue
            except (KeyError, TypeError, ValueError) as exc:
                await send_dead("bad_record", str(exc), where, event.value)
                continue
            BATCHES_IN.inc()
            EVENTS_IN.inc(len(batch))
            totals["batches"] += 1
            totals["events"] += len(batch)
            await enqueue(sessionizer.ingest(batch, partition=msg.partition,
                                             wall_ns=time.time_ns()))

    @app.agent(ticks, name="systerns.on_tick")
    async def on_tick(stream):
        async for event in stream.events():
            due = sessionizer.sweep(time.time_ns(), wall=True,
                                    partition=event.message.partition)
            OPEN.set(len(sessions))
            await enqueue(due)

    @app.timer(interval=TICK_INTERVAL_S, on_leader=True)
    async def send_ticks() -> None:
        now = str(time.time_ns()).encode()
        for p in range(partitions):
            await ticks.send(key=b"tick", value=now, partition=p)

    async def emit(outcome: Outcome) -> None:
        v = outcome.verdict
        await verdicts.send(key=v["session_id"].encode(), value=verdict_codec.encode(v))
        totals["verdicts"] += 1
        for a in outcome.alerts:
            if a["alert_id"] in seen_alerts:
                seen_alerts[a["alert_id"]] += 1
                DUP_ALERTS.inc()
                totals["duplicate_alerts"] += 1
                continue
            seen_alerts[a["alert_id"]] = 1
            while len(seen_alerts) > MAX_SEEN_ALERTS:
                seen_alerts.popitem(last=False)
            incident = suppressor.offer(a, time.time())
            if incident is None:
                # The same process and reason is already an open incident.
                SUPPRESSED.inc()
                totals["suppressed"] += 1
                continue
            a["incident_id"] = incident.incident_id
            await alerts.send(key=a["alert_id"].encode(), value=alert_codec.encode(a))
            if webhook is not None:
                asyncio.ensure_future(webhook.asend(a))
            ALERTS.labels(a["reason"]).inc()
            totals["alerts"] += 1
            log.warning("alert", alert_id=a["alert_id"], reason=a["reason"],
                        process=a["process_name"], behaves_like=a["behaves_like"],
                        malicious=round(a["malicious_probability"], 3))

    @app.task
    async def judge_loop() -> None:
        loop = asyncio.get_running_loop()
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
            backoff_s = 0.2
            while True:
                try:
                    outcomes = await loop.run_in_executor(executor, detector.judge, batch)
                    break
                except ModelUnavailableError as exc:
                    # Keep the judgements and retry: no verdict is lost while the
                    # model server is away.
                    MODEL_RETRIES.inc()
                    log.warning("model_unavailable", error=str(exc),
                                retry_in_s=backoff_s, waiting=len(batch))
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 10.0)
                except ModelError as exc:
                    log.error("model_failed", error=str(exc), judgements=len(batch))
                    for j in batch:
                        await send_dead("model_error", str(exc), j.session["session_id"],
                                        b"")
                    outcomes = []
                    break
            for o in outcomes:
                await emit(o)

    @app.timer(interval=10.0)
    async def report_incidents() -> None:
        for inc in suppressor.updates(time.time()):
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
    """

    def __init__(self, table) -> None:
        self.table = table
        self._cache: dict[str, dict] = {}

    def get(self, key: str, default=None):
        kb = key.encode()
        if kb not in self.table:
            self._cache.pop(key, None)
            return default
        state = self._cache.get(key)
        if state is None:
            state = orjson.loads(self.table[kb])
            self._cache[key] = state
        return state

    def __getitem__(self, key: str):
        state = self.get(key)
        if state is None:
            raise KeyError(key)
        return state

    def __setitem__(self, key: str, value: dict) -> None:
        self._cache[key] = value
        self.table[key.encode()] = orjson.dumps(value)

    def __delitem__(self, key: str) -> None:
        self._cache.pop(key, None)
        del self.table[key.encode()]

    def __contains__(self, key: str) -> bool:
        return key.encode() in self.table

    def __len__(self) -> int:
        return len(self.table)

    def keys(self):
        return [k.decode() for k in list(self.table.keys())]

    def items(self):
        owned = self.keys()
        if len(self._cache) > 2 * len(owned) + 1000:
            keep = set(owned)
            self._cache = {k: v for k, v in self._cache.items() if k in keep}
        return [(k, self.get(k)) for k in owned]
