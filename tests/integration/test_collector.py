"""The collector against the real broker: counts, keys, dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from systerns.producers.sysdig import ReadStats, read_lines
from systerns.schemas.codec import Codec
from systerns.schemas.records import record_to_batch
from tests.conftest import consume_all

pytestmark = pytest.mark.integration


def env_for(broker: str, topics: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTERNS_")}
    env |= {"SYSTERNS_BOOTSTRAP_SERVERS": broker,
            "SYSTERNS_EVENTS_TOPIC": topics["events"],
            "SYSTERNS_DEADLETTER_TOPIC": topics["deadletter"],
            "SYSTERNS_HOST": "node-a"}
    return env


def test_capture_is_published_whole_and_keyed_by_process(broker, topics, scap_dir,
                                                         sysdig):
    scap = scap_dir / "falco" / "psp_run_as_user_0_container.scap"
    out = subprocess.run([sys.executable, "-m", "systerns", "collect", "--scap", str(scap)],
                         env=env_for(broker, topics), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    pub = summary["published"]
    assert pub["events_delivered"] == pub["events_sent"] == summary["read"]["syscalls"]
    assert pub["delivery_errors"] == 0

    msgs = consume_all(broker, topics["events"], expect=pub["batches_sent"])
    codec = Codec("event_batch")
    partitions_by_key = defaultdict(set)
    events = 0
    for m in msgs:
        rec = codec.decode(m.value())
        assert m.key().decode() == f"{rec['host']}/{rec['container_id']}/{rec['pid']}"
        assert rec["host"] == "node-a"
        partitions_by_key[m.key()].add(m.partition())
        events += len(record_to_batch(rec))
    assert events == pub["events_sent"]
    assert all(len(p) == 1 for p in partitions_by_key.values())
    assert len({p for ps in partitions_by_key.values() for p in ps}) > 1


def test_truncated_capture_is_dead_lettered_with_its_reason(broker, topics, scap_dir,
                                                            sysdig):
    scap = scap_dir / "libs" / "curl_google_comments.scap"
    out = subprocess.run([sys.executable, "-m", "systerns", "collect", "--scap", str(scap)],
                         env=env_for(broker, topics), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert "truncated" in out.stderr or "could not read" in out.stderr
    msgs = consume_all(broker, topics["deadletter"], expect=1)
    rec = Codec("dead_letter").decode(msgs[0].value())
    assert rec["reason"] == "unreadable_capture"
    assert "curl_google_comments.scap" in rec["source"]


def test_bad_lines_become_dead_letters_and_good_ones_still_go(broker, topics, scap_dir,
                                                              sysdig):
    scap = scap_dir / "libs" / "curl_google.scap"
    good = subprocess.run(["sysdig", "-r", str(scap), "-j", "-p",
                           __import__("systerns.producers.sysdig",
                                      fromlist=["x"]).OUTPUT_FORMAT],
                          capture_output=True, timeout=60).stdout.splitlines()
    hostile = [b'{"evt.type": "open", "evt.di', b"\xff\xfe not json",
               b'{"evt.type": "$(rm -rf /)", "evt.dir": "<", "evt.rawtime": 1}',
               b'{"evt.type": "open", "evt.dir": "<", "evt.rawtime": "soon"}']
    lines = good[:300] + hostile + good[300:]
    settings = Settings.from_env({}, bootstrap_servers=broker,
                                 events_topic=topics["events"],
                                 deadletter_topic=topics["deadletter"], host="t")
    pub = Publisher(settings)
    stats = ReadStats()
    pub.publish(read_lines(lines, "t", stats), source="test")
    result = pub.close()
    assert result.dead_letters == 4
    assert result.events_delivered == stats.syscalls > 500
    dl = consume_all(broker, topics["deadletter"], expect=4)
    reasons = sorted(Codec("dead_letter").decode(m.value())["reason"] for m in dl)
    assert reasons == ["bad_field", "not_json", "not_json", "unknown_event"]
