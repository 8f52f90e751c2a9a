"""Process settings from the environment (prefix ``SYSTERNS_``), built once.

Each field documents its variable. Unknown ``SYSTERNS_*`` variables fail, so a
typo in a manifest is an error at start-up rather than a silent default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from systerns.core.errors import SettingsError

PREFIX = "SYSTERNS_"
#: Variables read elsewhere (scripts, tests) that are not settings fields.
_OTHER_VARS = frozenset({
    "SYSTERNS_KAFKA_HOME", "SYSTERNS_KAFKA_PORT", "SYSTERNS_KAFKA_CONTROLLER_PORT",
    "SYSTERNS_EVENTS_PARTITIONS", "SYSTERNS_REQUIRE_BROKER", "SYSTERNS_LOG_FORMAT",
    "SYSTERNS_LOG_LEVEL", "SYSTERNS_CORPUS", "SYSTERNS_SHARED_DATA",
    "SYSTERNS_DATA_DIR",
})


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings of a collector, worker or model client."""

    #: SYSTERNS_BOOTSTRAP_SERVERS: Kafka brokers.
    bootstrap_servers: str = "127.0.0.1:9092"
    #: SYSTERNS_EVENTS_TOPIC, SYSTERNS_VERDICTS_TOPIC, ...: topic names.
    events_topic: str = "systerns.events"
    verdicts_topic: str = "systerns.verdicts"
    alerts_topic: str = "systerns.alerts"
    deadletter_topic: str = "systerns.deadletter"
    #: SYSTERNS_HOST: the node name put on every event.
    host: str = ""
    #: SYSTERNS_MODEL_TARGET: host:port of the PredictionService.
    model_target: str = "127.0.0.1:8500"
    #: SYSTERNS_MODEL_NAME / SYSTERNS_MODEL_VERSION (0 = latest).
    model_name: str = "systerns"
    model_version: int = 0
    #: SYSTERNS_MODEL_TIMEOUT_S: deadline of one Predict call.
    model_timeout_s: float = 2.0
    #: SYSTERNS_SECURITY_PROTOCOL, SYSTERNS_SASL_*: broker credentials.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""
    #: SYSTERNS_METRICS_PORT: Prometheus endpoint (0 = off).
    metrics_port: int = 0
    #: SYSTERNS_QUEUE_MAX_MESSAGES: bound of the producer's local queue.
    queue_max_messages: int = 20_000
    #: SYSTERNS_MALICIOUS_THRESHOLD: probability that makes a mining alert.
    malicious_threshold: float = 0.9
    #: SYSTERNS_WORKER_ID: the Faust app id (consumer group).
    worker_id: str = "systerns-worker"
    #: SYSTERNS_SCHEMA_REGISTRY_URL: Confluent wire format when set, else Avro
    #: single-object encoding.
    schema_registry_url: str = ""
    #: SYSTERNS_WEBHOOK_URL / SYSTERNS_WEBHOOK_FORMAT (alert, ocsf, ecs, slack).
    webhook_url: str = ""
    webhook_format: str = "alert"
    #: SYSTERNS_SUPPRESS_WINDOW_S: repeats of one (host, container, process,
    #: reason) within this gap are one incident, not new alerts.
    suppress_window_s: float = 600.0
    #: SYSTERNS_IDLE_S: a session without events for this long is judged, closed.
    idle_s: float = 30.0
    #: SYSTERNS_JUDGE_EVERY_S: a running session is judged again this often.
    judge_every_s: float = 5.0
    #: SYSTERNS_MAX_SESSIONS: open sessions per worker; the oldest is evicted
    #: (judged, marked evicted) past it.
    max_sessions: int = 100_000
    #: SYSTERNS_JUDGE_QUEUE_MAX: judgements waiting for the model; a full queue
    #: pauses consumption instead of dropping.
    judge_queue_max: int = 10_000
    #: SYSTERNS_BREAKER_FAILURES / SYSTERNS_BREAKER_COOLDOWN_S: the model circuit
    #: breaker opens after this many consecutive failures and probes again after
    #: the cooldown.
    breaker_failures: int = 5
    breaker_cooldown_s: float = 5.0
    #: SYSTERNS_OUTAGE_POLICY: what the collector does with records the brokers
    #: do not take in time: ``block`` (wait, never time out), ``spill`` (append
    #: them to the spool file and replay it later) or ``drop`` (drop and count).
    outage_policy: str = "block"
    #: SYSTERNS_MESSAGE_TIMEOUT_MS: how long the collector retries one record
    #: (``spill`` and ``drop``; ``block`` never times out).
    message_timeout_ms: int = 120_000
    #: SYSTERNS_SPOOL_PATH / SYSTERNS_SPOOL_MAX_BYTES: the ``spill`` spool file
    #: and its size cap (records past the cap are dropped and counted).
    spool_path: str = "var/spool/collector.spool"
    spool_max_bytes: int = 256 * 1024 * 1024
    #: SYSTERNS_INTERNAL_REPLICATION_FACTOR: replicas of the worker's own
    #: topics (table changelogs, ticks, alert index); 3 on a real cluster.
    internal_replication_factor: int = 1

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from the environment; explicit overrides win.

        Raises:
            SettingsError: an unknown ``SYSTERNS_`` variable or a value of the wrong
                type (a ``ValueError``).
        """
        env = dict(os.environ if env is None else env)
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        for var, raw in env.items():
            if not var.startswith(PREFIX) or var in _OTHER_VARS:
                continue
            name = var[len(PREFIX):].lower()
            if name not in known:
                raise SettingsError(f"unknown setting {var}")
            typ = type(getattr(cls(), name))
            try:
                values[name] = typ(raw)
            except ValueError as exc:
                raise SettingsError(f"{var}={raw!r} is not a {typ.__name__}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def kafka_config(self) -> dict[str, str]:
        """librdkafka client settings for the brokers and credentials."""
        conf = {"bootstrap.servers": self.bootstrap_servers,
                "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf

    def masked(self) -> dict[str, object]:
        """Settings for the start-up log line, secrets masked."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["sasl_password"]:
            out["sasl_password"] = "***"
        if out["webhook_url"]:
            # Webhook URLs carry their secret in the path (Slack) or query.
            from urllib.parse import urlsplit

            out["webhook_url"] = f"{urlsplit(out['webhook_url']).hostname or '?'}/***"
        return out
