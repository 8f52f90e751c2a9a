"""Suppression windows: repeated alerts become one incident, with a fake clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, MutableMapping

import pytest
from structlog.testing import capture_logs

from systerns.core.suppression import Incident, Suppressor, incident_id, incident_key

WINDOW_S = 600.0
EVERY_S = 60.0


def alert(
    n: int = 0,
    *,
    host: str = "node-1",
    container_id: str = "c1",
    process_name: str = "kworker",
    reason: str = "crypto_mining",
) -> dict:
    """The fields of an alert record the suppressor reads."""
    parts = json.dumps([host, container_id, process_name, reason, n])
    return {
        "alert_id": "sys-" + hashlib.sha256(parts.encode()).hexdigest()[:32],
        "host": host,
        "container_id": container_id,
        "process_name": process_name,
        "reason": reason,
    }


class Table(MutableMapping):
    """A stand-in for a Faust table: counts writes, refuses in-place tricks."""

    def __init__(self) -> None:
        self.data: dict[str, dict] = {}
        self.writes = 0

    def __getitem__(self, key: str) -> dict:
        # A copy, as a changelog-backed table would hand out.
        return json.loads(json.dumps(self.data[key]))

    def __setitem__(self, key: str, value: dict) -> None:
        self.writes += 1
        self.data[key] = json.loads(json.dumps(value))

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.data))  # RocksDB order: by key, not by age

    def __len__(self) -> int:
        return len(self.data)


def test_first_alert_opens_an_incident_and_repeats_merge():
    """Only the first alert is emitted; the rest grow the count and last_seen."""
    s = Suppressor(window_s=WINDOW_S, update_every_s=EVERY_S)

    opened = s.offer(alert(0), now_s=1000.0)
    merged = [s.offer(alert(i), now_s=1000.0 + 5 * i) for i in range(1, 10)]

    assert isinstance(opened, Incident)
    assert merged == [None] * 9
    (incident,) = s.open_incidents(now_s=1045.0)
    assert incident.incident_id == opened.incident_id
    assert (incident.count, incident.first_seen_s, incident.last_seen_s) == (
        10,
        1000.0,
        1045.0,
    )
    assert incident.first_alert_id == alert(0)["alert_id"]
    assert incident.last_alert_id == alert(9)["alert_id"]


def test_a_miner_running_for_hours_is_one_incident():
    """An alert every 5 minutes for 6 hours never leaves the 10-minute window."""
    s = Suppressor(window_s=WINDOW_S)

    emitted = [s.offer(alert(i), now_s=300.0 * i) for i in range(6 * 12 + 1)]

    assert sum(e is not None for e in emitted) == 1
    (incident,) = s.open_incidents(now_s=6 * 3600.0)
    assert incident.count == 73
    assert incident.last_seen_s - incident.first_seen_s == 6 * 3600.0


def test_after_a_quiet_window_the_next_alert_opens_a_new_incident():
    """A gap longer than the window starts over with a new id and count 1."""
    s = Suppressor(window_s=WINDOW_S)

    first = s.offer(alert(0), now_s=0.0)
    s.offer(alert(1), now_s=100.0)
    at_edge = s.offer(alert(2), now_s=100.0 + WINDOW_S)  # exactly the window: same
    second = s.offer(alert(3), now_s=100.0 + 2 * WINDOW_S + 1)

    assert at_edge is None
    assert second is not None and first is not None
    assert second.incident_id != first.incident_id
    assert (second.count, second.first_alert_id) == (1, alert(3)["alert_id"])


@pytest.mark.parametrize(
    "other",
    [
        dict(host="node-2"),
        dict(container_id="c2"),
        dict(process_name="xmrig"),
        dict(reason="masquerading"),
    ],
)
def test_each_part_of_the_key_separates_incidents(other):
    """Host, container, process name and reason each make their own incident."""
    s = Suppressor(window_s=WINDOW_S)

    assert s.offer(alert(0), now_s=0.0) is not None
    assert s.offer(alert(1, **other), now_s=1.0) is not None
    assert len(s.open_incidents(now_s=2.0)) == 2


def test_keys_keep_hostile_names_apart():
    """A name holding the separator cannot collide with another key."""
    a = alert(0, host="a|b", container_id="c")
    b = alert(0, host="a", container_id="b|c")

    assert incident_key(a) != incident_key(b)
    assert json.loads(incident_key(a)) == ["a|b", "c", "kworker", "crypto_mining"]


def test_incident_ids_are_deterministic():
    """The same alerts replayed into a fresh suppressor give the same ids."""
    runs = []
    for _ in range(2):
        s = Suppressor(window_s=WINDOW_S)
        runs.append([s.offer(alert(i), now_s=i * 1000.0) for i in range(3)])

    assert [i.incident_id for i in runs[0]] == [i.incident_id for i in runs[1]]
    key = incident_key(alert(0))
    assert runs[0][0].incident_id == incident_id(key, alert(0)["alert_id"])
    assert runs[0][0].incident_id.startswith("inc-")


def test_updates_come_at_most_once_per_interval():
    """A steady stream of merges gives one update per interval, with the count."""
    s = Suppressor(window_s=WINDOW_S, update_every_s=EVERY_S)
    s.offer(alert(0), now_s=0.0)

    reported = []
    for t in range(1, 181):  # an alert and a tick every second for 3 minutes
        s.offer(alert(t), now_s=float(t))
        reported += [(t, i.count) for i in s.updates(now_s=float(t))]

    assert reported == [(60, 61), (120, 121), (180, 181)]


def test_no_update_without_new_alerts():
    """An incident that only opened has nothing to report."""
    s = Suppressor(window_s=WINDOW_S, update_every_s=EVERY_S)
    s.offer(alert(0), now_s=0.0)

    assert s.updates(now_s=1000.0) == []


def test_a_closed_incident_reports_its_final_count_early():
    """When the window ends, unreported merges are reported without waiting."""
    s = Suppressor(window_s=10.0, update_every_s=3600.0)
    s.offer(alert(0), now_s=0.0)
    s.offer(alert(1), now_s=5.0)

    assert s.updates(now_s=6.0) == []
    (final,) = s.updates(now_s=16.0)
    assert final.count == 2
    assert s.updates(now_s=17.0) == []


def test_a_replaced_incident_reports_its_final_count():
    """An incident reopened before its last merges were reported is not lost."""
    s = Suppressor(window_s=10.0, update_every_s=3600.0)
    s.offer(alert(0), now_s=0.0)
    s.offer(alert(1), now_s=5.0)
    reopened = s.offer(alert(2), now_s=100.0)

    updates = s.updates(now_s=100.0)

    assert reopened is not None
    assert [(u.count, u.last_alert_id) for u in updates] == [(2, alert(1)["alert_id"])]


def test_state_is_bounded_and_the_least_recent_goes_first():
    """Past max_keys, closed incidents go, then the least recently seen."""
    s = Suppressor(window_s=WINDOW_S, max_keys=3)
    for n, name in enumerate(["a", "b", "c"]):
        s.offer(alert(n, process_name=name), now_s=float(n))
    s.offer(alert(9, process_name="a"), now_s=10.0)  # a is now the most recent

    with capture_logs() as logs:
        s.offer(alert(0, process_name="d"), now_s=11.0)

    names = sorted(i.process_name for i in s.open_incidents(now_s=11.0))
    assert names == ["a", "c", "d"]
    assert len(s.state) == 3
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "incident_evicted"
    ]


def test_closed_incidents_make_room_before_open_ones_are_evicted():
    """A full state drops incidents whose window ended, and keeps open ones."""
    s = Suppressor(window_s=10.0, max_keys=2)
    s.offer(alert(0, process_name="old"), now_s=0.0)
    s.offer(alert(0, process_name="live"), now_s=15.0)

    with capture_logs() as logs:
        s.offer(alert(0, process_name="new"), now_s=20.0)

    assert sorted(i.process_name for i in s.open_incidents(20.0)) == ["live", "new"]
    assert [e["event"] for e in logs if e["event"] == "incident_evicted"] == []


def test_expire_drops_closed_incidents_after_their_final_update():
    """expire keeps an incident until its final count has been reported."""
    s = Suppressor(window_s=10.0, update_every_s=3600.0)
    s.offer(alert(0), now_s=0.0)
    s.offer(alert(1), now_s=1.0)

    assert s.expire(now_s=50.0) == 0
    assert [u.count for u in s.updates(now_s=50.0)] == [2]
    assert s.expire(now_s=50.0) == 1
    assert len(s.state) == 0


def test_state_is_plain_json_and_works_in_a_table():
    """Records are dicts of JSON scalars written back whole, as a table needs."""
    table = Table()
    s = Suppressor(table, window_s=WINDOW_S, update_every_s=EVERY_S)

    s.offer(alert(0), now_s=0.0)
    s.offer(alert(1), now_s=61.0)
    (update,) = s.updates(now_s=61.0)

    (record,) = table.data.values()
    assert update.count == 2 == record["count"]
    assert record["reported_count"] == 2
    assert set(record) >= {
        "incident_id",
        "first_alert_id",
        "last_alert_id",
        "count",
        "first_seen_s",
        "last_seen_s",
    }
    assert table.writes == 3  # open, merge, reported


def test_a_restored_state_continues_the_incident():
    """A new suppressor over the same state (a worker restart) keeps merging."""
    state: dict = {}
    first = Suppressor(state, window_s=WINDOW_S).offer(alert(0), now_s=0.0)

    again = Suppressor(state, window_s=WINDOW_S)

    assert again.offer(alert(1), now_s=30.0) is None
    (incident,) = again.open_incidents(now_s=30.0)
    assert first is not None and incident.incident_id == first.incident_id
    assert incident.count == 2


def test_opening_is_logged_with_ids_only():
    """The log line names the incident and alert, not the hostile process name."""
    s = Suppressor()

    with capture_logs() as logs:
        opened = s.offer(alert(0, process_name="evil\x1b[2J"), now_s=0.0)

    assert opened is not None
    assert logs == [
        {
            "event": "incident_opened",
            "log_level": "info",
            "incident_id": opened.incident_id,
            "alert_id": alert(0, process_name="evil\x1b[2J")["alert_id"],
            "reason": "crypto_mining",
        }
    ]


@pytest.mark.parametrize(
    "kwargs", [dict(window_s=0), dict(max_keys=0), dict(update_every_s=-1)]
)
def test_settings_must_be_positive(kwargs):
    """A zero window, bound or interval is refused."""
    with pytest.raises(ValueError):
        Suppressor(**kwargs)
