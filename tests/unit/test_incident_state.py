"""Incidents saved on the alert-index topic: what is written, what is merged."""

from __future__ import annotations

import orjson

from systerns.core.suppression import Suppressor
from systerns.streams.app import INCIDENT_PREFIX, IncidentState

ALERT = {"host": "h", "container_id": "c", "process_name": "kworker",
         "reason": "crypto_mining", "alert_id": "a1"}


def test_changes_carry_each_changed_incident_once():
    state = IncidentState()
    sup = Suppressor(state, window_s=60)
    assert sup.offer(ALERT, 100.0) is not None
    assert sup.offer(ALERT | {"alert_id": "a2"}, 110.0) is None

    changes = state.changes()
    assert len(changes) == 1
    key, value = changes[0]
    assert key.startswith(INCIDENT_PREFIX.encode())
    assert orjson.loads(value)["count"] == 2
    assert state.changes() == []


def test_a_restarted_suppressor_continues_the_saved_incident():
    saved = IncidentState()
    Suppressor(saved, window_s=60).offer(ALERT, 100.0)
    restarted = IncidentState()
    for key, value in saved.changes():
        restarted.merge(key.decode()[len(INCIDENT_PREFIX):], value)

    assert Suppressor(restarted, window_s=60).offer(
        ALERT | {"alert_id": "a3"}, 120.0) is None
    assert Suppressor(IncidentState(), window_s=60).offer(
        ALERT | {"alert_id": "a3"}, 120.0) is not None


def test_merge_keeps_the_latest_and_drops_tombstones_and_garbage():
    state = IncidentState()
    state.merge("k", orjson.dumps({"last_seen_s": 5.0, "count": 2}))
    state.merge("k", orjson.dumps({"last_seen_s": 3.0, "count": 1}))  # late echo
    assert state["k"]["count"] == 2
    state.merge("k", b"{not json")
    assert state["k"]["count"] == 2
    state.merge("k", None)
    assert "k" not in state
    assert state.changes() == []  # merged records are not written back
