"""Replay against the real broker: range, private group, two model versions."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer

from systerns.cli.stack import REPO
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from systerns.producers.sysdig import read_capture
from systerns.streams.replay import parse_bound, run_backtest, write_report

pytestmark = pytest.mark.integration
MODELS = REPO / "models" / "systerns"


def test_bounds_parse():
    assert parse_bound("offset:5") == ("offset", 5)
    assert parse_bound("17") == ("offset", 17)
    assert parse_bound("1700000000000") == ("time_ms", 1700000000000)
    assert parse_bound("2026-01-01T00:00:00Z") == ("time_ms", 1767225600000)
    assert parse_bound(None) is None


def test_backtest_of_two_versions_never_moves_live_offsets(broker, topics, scap_dir,
                                                           sysdig, tmp_path):
    from systerns.serving.client import LocalModel
    from systerns.serving.export import list_versions

    versions = list_versions(MODELS.parent, MODELS.name)
    if not versions:
        pytest.fail("no exported model under models/systerns")
    settings = Settings.from_env({}, bootstrap_servers=broker,
                                 events_topic=topics["events"],
                                 alerts_topic=topics["alerts"], host="replay-node")
    pub = Publisher(settings)
    for rel in ("falco/psp_run_as_user_0_container.scap", "libs/curl_google.scap"):
        pub.publish(read_capture(scap_dir / rel, "replay-node"), source=rel)
    sent = pub.close()

    # A "live" group with committed offsets that the replay must leave alone.
    live = Consumer({"bootstrap.servers": broker, "group.id": f"live-{topics['events']}",
                     "auto.offset.reset": "earliest", "log_level": 0})
    live.subscribe([topics["events"]])
    got = 0
    deadline = time.monotonic() + 20
    while got < 3 and time.monotonic() < deadline:
        m = live.poll(0.5)
        got += m is not None and not m.error()
    live.commit(asynchronous=False)
    before = {tp.partition: tp.offset for tp in live.committed(live.assignment())}

    first, last = versions[0], versions[-1]
    models = {f"v{first}": LocalModel(MODELS, version=first),
              f"v{last}b": LocalModel(MODELS, version=last)}
    report = run_backtest(settings, start="offset:0", end=None, models=models)
    after = {tp.partition: tp.offset for tp in live.committed(live.assignment())}
    live.close()

    assert before == after
    assert report["events"] == sent.events_delivered
    assert report["records_read"] == sent.batches_delivered
    assert report["sessions"] >= 10
    diff = report["diff"][f"v{first}->v{last}b"]
    assert set(diff) == {"added", "removed", "changed"}
    if first == last:
        assert diff == {"added": [], "removed": [], "changed": []}
    json_path, md_path = write_report(report, tmp_path / "bt")
    assert "backtest" in md_path.read_text() and json_path.exists()
