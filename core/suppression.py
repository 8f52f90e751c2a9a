"""Suppression of repeated alerts into incidents, one per quiet window.

Alerts are grouped by key ``(host, container_id, process_name, reason)``. The
first alert of a key opens an *incident* and is emitted; later alerts of that
key merge into it (its ``count`` and ``last_seen_s`` grow) and are not emitted
again, for as long as no more than ``window_s`` passes between two of them. A
miner that runs for hours, or restarts every minute under the same name, is
one incident whose count keeps growing; once the key has been quiet for longer
than the window, its next alert opens a new incident.

The state is a plain mapping of key string to incident record (a dict of JSON
scalars), so it can be a dict or a Faust table: records are never changed in
place, every change is written back with ``state[key] = record`` (which is
what sends a Faust table's changelog entry). The number of keys is bounded;
the least recently seen incident is evicted first.

``updates`` hands out, at most once per ``update_every_s`` per incident, the
incidents whose count grew since they were last reported, so the worker can
publish an "incident updated" notification without one per merged alert.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

DEFAULT_WINDOW_S = 600.0
DEFAULT_MAX_KEYS = 10_000
DEFAULT_UPDATE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Incident:
    """A snapshot of one incident: alerts of one key with no long gap between them.

    Attributes:
        incident_id: deterministic, from the key and the first alert's id.
        host: where the process ran.
        container_id: its container (``host`` when none).
        process_name: the process name as seen.
        reason: the alert reason (``crypto_mining``, ``masquerading`` ...).
        first_alert_id: the alert that opened the incident (the emitted one).
        last_alert_id: the latest alert merged into it.
        count: alerts in the incident, the first included.
        first_seen_s: clock time of the first alert, in seconds.
        last_seen_s: clock time of the latest alert, in seconds.
    """

    incident_id: str
    host: str
    container_id: str
    process_name: str
    reason: str
    first_alert_id: str
    last_alert_id: str
    count: int
    first_seen_s: float
    last_seen_s: float

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Incident:
        """The snapshot of a state record."""
        return cls(
            incident_id=str(record["incident_id"]),
            host=str(record["host"]),
            container_id=str(record["container_id"]),
            process_name=str(record["process_name"]),
            reason=str(record["reason"]),
            first_alert_id=str(record["first_alert_id"]),
            last_alert_id=str(record["last_alert_id"]),
            count=int(record["count"]),
            first_seen_s=float(record["first_seen_s"]),
            last_seen_s=float(record["last_seen_s"]),
        )


def incident_key(alert: dict[str, Any]) -> str:
    """The suppression key of an alert, as a string usable as a table key.

    JSON keeps the four parts apart whatever characters a hostile process
    name holds.
    """
    parts = [
        alert["host"],
        alert["container_id"],
        alert["process_name"],
        alert["reason"],
    ]
    return json.dumps(
        [str(p) for p in parts], ensure_ascii=False, separators=(",", ":")
    )


def incident_id(key: str, first_alert_id: str) -> str:
    """Deterministic incident id: a replay of the same alerts gives the same id."""
    digest = hashlib.sha256(f"{key}|{first_alert_id}".encode()).hexdigest()
    return f"inc-{digest[:32]}"


class Suppressor:
    """Turns a stream of alerts into incidents, emitting each incident once.

    Args:
        state: where incident records live (a dict or a Faust table); a new
            dict when None.
        window_s: longest quiet gap, in seconds, that still continues an
            incident.
        max_keys: most incidents kept; beyond it closed ones go first, then
            the least recently seen.
        update_every_s: shortest time between two reported updates of one
            incident.

    Raises:
        ValueError: a window, bound or interval that is not positive.
    """

    def __init__(
        self,
        state: MutableMapping[str, dict[str, Any]] | None = None,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_keys: int = DEFAULT_MAX_KEYS,
        update_every_s: float = DEFAULT_UPDATE_EVERY_S,
    ) -> None:
        if window_s <= 0 or max_keys <= 0 or update_every_s <= 0:
            raise ValueError("window_s, max_keys and update_every_s must be positive")
        self.state: MutableMapping[str, dict[str, Any]] = {} if state is None else state
        self.window_s = window_s
        self.max_keys = max_keys
        self.update_every_s = update_every_s
        # NOTE: kept in memory only. After a restart, an incident with merged
        # but unreported alerts is reported again at its next merged alert.
        self._dirty: set[str] = set()
        # Final counts of incidents replaced by a new one before reported.
        self._pending: list[Incident] = []

    def offer(self, alert: dict[str, Any], now_s: float) -> Incident | None:
        """Account for one alert; returns the incident it opens, else None.

        Args:
            alert: an ``alert`` record (``host``, ``container_id``,
                ``process_name``, ``reason`` and ``alert_id`` are read).
            now_s: the current time in seconds (wall clock, or a fake in tests).

        Returns:
            A new incident when the alert opens one: emit the alert. None when
            it merged into an open incident: do not emit it.
        """
        key = incident_key(alert)
        record = self.state.get(key)
        if record is not None and now_s - float(record["last_seen_s"]) <= self.window_s:
            merged = dict(record)
            merged["count"] = int(record["count"]) + 1
            merged["last_seen_s"] = max(float(record["last_seen_s"]), now_s)
            merged["last_alert_id"] = alert["alert_id"]
            self.state[key] = merged
            self._dirty.add(key)
            return None

        if record is None:
            self._make_room(now_s)
        elif int(record["count"]) != int(record["reported_count"]):
            self._pending.append(Incident.from_record(record))
        opened = {
            "incident_id": incident_id(key, alert["alert_id"]),
            "host": alert["host"],
            "container_id": alert["container_id"],
            "process_name": alert["process_name"],
            "reason": alert["reason"],
            "first_alert_id": alert["alert_id"],
            "last_alert_id": alert["alert_id"],
            "count": 1,
            "first_seen_s": now_s,
            "last_seen_s": now_s,
            "reported_count": 1,
            "reported_s": now_s,
        }
        self.state[key] = opened
        self._dirty.discard(key)
        log.info(
            "incident_opened",
            incident_id=opened["incident_id"],
            alert_id=alert["alert_id"],
            reason=alert["reason"],
        )
        return Incident.from_record(opened)

    def updates(self, now_s: float) -> list[Incident]:
        """Incidents whose count grew since last reported, due to be reported now.

        An incident is due when ``update_every_s`` has passed since its last
        report, or when its window has ended (the final count). The final
        counts of incidents that were replaced or evicted before being
        reported come first. Each returned incident counts as reported.

        Args:
            now_s: the current time in seconds.

        Returns:
            The due incidents, oldest first after the replaced ones.
        """
        due: list[dict[str, Any]] = []
        for key in sorted(self._dirty):
            record = self.state.get(key)
            if record is None or int(record["count"]) == int(record["reported_count"]):
                self._dirty.discard(key)
                continue
            closed = now_s - float(record["last_seen_s"]) > self.window_s
            if not closed and now_s - float(record["reported_s"]) < self.update_every_s:
                continue
            reported = dict(record)
            reported["reported_count"] = int(record["count"])
            reported["reported_s"] = now_s
            self.state[key] = reported
            self._dirty.discard(key)
            due.append(reported)
        due.sort(key=lambda r: (float(r["first_seen_s"]), str(r["incident_id"])))
        out, self._pending = self._pending, []
        return out + [Incident.from_record(r) for r in due]

    def expire(self, now_s: float) -> int:
        """Drop the records of incidents whose window has ended.

        Call it after ``updates`` so a closed incident's final count is
        reported first.

        Args:
            now_s: the current time in seconds.

        Returns:
            How many records were dropped.
        """
        closed = [
            key
            for key, record in self.state.items()
            if now_s - float(record["last_seen_s"]) > self.window_s
            and key not in self._dirty
        ]
        for key in closed:
            del self.state[key]
        return len(closed)

    def open_incidents(self, now_s: float) -> list[Incident]:
        """Incidents whose window has not ended, oldest first."""
        alive = [
            r
            for r in self.state.values()
            if now_s - float(r["last_seen_s"]) <= self.window_s
        ]
        alive.sort(key=lambda r: (float(r["first_seen_s"]), str(r["incident_id"])))
        return [Incident.from_record(r) for r in alive]

    def _make_room(self, now_s: float) -> None:
        # NOTE: a linear scan, run only when the state is full and a new key
        # arrives; new incidents are rare next to events, and a Faust table
        # backed by RocksDB iterates by key, not by age, so order cannot help.
        if len(self.state) < self.max_keys:
            return
        self.expire(now_s)
        while len(self.state) >= self.max_keys:
            oldest = min(
                self.state.items(), key=lambda kv: float(kv[1]["last_seen_s"])
            )[0]
            evicted = self.state.pop(oldest)
            self._dirty.discard(oldest)
            if int(evicted["count"]) != int(evicted["reported_count"]):
                self._pending.append(Incident.from_record(evicted))
            log.warning(
                "incident_evicted",
                incident_id=evicted["incident_id"],
                count=evicted["count"],
                max_keys=self.max_keys,
            )
