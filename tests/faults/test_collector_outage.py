"""Fault (e): the collector facing a broker outage, under each outage policy.

The dead broker is a closed port on 127.0.0.1; every record must end up
delivered, spilled, dropped, in flight or unsent, and counted as such.
"""

from __future__ import annotations

import threading
import time

import pytest

from systerns.cli.stack import free_port
from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from tests.conftest import consume_all

pytestmark = pytest.mark.integration
EVENTS_PER_BATCH = 50


def make_batches(n: int, host: str = "outage-node"):
    """``n`` batches of ``EVENTS_PER_BATCH`` syscalls over 10 processes."""
    for i in range(n):
        info = ProcessInfo(host, "c1", 1000 + i % 10, 1, "worker", "/bin/worker",
                           "worker --run")
        yield EventBatch(info, tuple(
            Syscall(1_700_000_000_000_000_000 + i * 1000 + k, 1000 + i % 10, "read", 3)
            for k in range(EVENTS_PER_BATCH)), "test")


def dead_settings(tmp_path, policy: str, topics: dict | None = None,
                  **extra) -> Settings:
    """Settings naming a closed port as the broker (nothing listens there)."""
    topics = topics or {"events": "t-never", "deadletter": "t-never-dlq"}
    return Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", outage_policy=policy,
                    message_timeout_ms=1500, spool_path=str(tmp_path / "c.spool"),
                    events_topic=topics["events"],
                    deadletter_topic=topics["deadletter"], **extra)


def quiet_publisher(settings: Settings) -> Publisher:
    return Publisher(settings, extra={"log_level": 0})


def test_drop_policy_counts_every_dropped_event(tmp_path):
    pub = quiet_publisher(dead_settings(tmp_path, "drop"))
    pub.publish(make_batches(40), source="test")
    stats = pub.close(timeout_s=10)

    print(f"\ndrop: sent={stats.events_sent} dropped={stats.events_dropped}")
    assert stats.events_sent == 40 * EVENTS_PER_BATCH
    assert stats.events_dropped == stats.events_sent
    assert stats.events_delivered == 0
    assert stats.unaccounted() == 0


def test_spill_policy_spools_then_replays_when_the_broker_answers(
        tmp_path, broker, topics):
    dead = quiet_publisher(dead_settings(tmp_path, "spill", topics))
    dead.publish(make_batches(40), source="test")
    down = dead.close(timeout_s=10)

    assert down.events_spilled == down.events_sent == 40 * EVENTS_PER_BATCH
    assert down.unaccounted() == 0
    assert (tmp_path / "c.spool").stat().st_size == down.spool_bytes

    live = Publisher(Settings(bootstrap_servers=broker, outage_policy="spill",
                              spool_path=str(tmp_path / "c.spool"),
                              events_topic=topics["events"],
                              deadletter_topic=topics["deadletter"]))
    up = live.close(timeout_s=30)
    msgs = consume_all(broker, topics["events"], expect=40, timeout_s=30)

    print(f"\nspill: sent={down.events_sent} spilled={down.events_spilled} "
          f"replayed={up.events_replayed} delivered={up.events_delivered} "
          f"on_topic={len(msgs) * EVENTS_PER_BATCH}")
    assert up.events_replayed == up.events_delivered == down.events_sent
    assert len(msgs) == 40
    assert not (tmp_path / "c.spool").exists()


def test_spill_policy_drops_and_counts_past_the_spool_cap(tmp_path):
    pub = quiet_publisher(dead_settings(tmp_path, "spill", spool_max_bytes=4000))
    pub.publish(make_batches(40), source="test")
    stats = pub.close(timeout_s=10)

    assert stats.events_spilled > 0
    assert stats.events_dropped > 0
    assert stats.dropped_reasons == {"spool_full": stats.records_dropped}
    assert stats.events_spilled + stats.events_dropped == stats.events_sent
    assert (tmp_path / "c.spool").stat().st_size <= 4000
    assert stats.unaccounted() == 0


def test_block_policy_holds_a_bounded_queue_and_reports_it_at_stop(tmp_path):
    pub = quiet_publisher(dead_settings(tmp_path, "block", queue_max_messages=20))
    worker = threading.Thread(target=pub.publish, args=(make_batches(10_000),),
                              kwargs={"source": "test"})
    worker.start()
    time.sleep(4)
    blocked = worker.is_alive()
    queued = pub.stats.events_sent
    pub.stopping.set()
    worker.join(timeout=10)
    stats = pub.close(timeout_s=1)

    print(f"\nblock: queued={queued} waits={stats.queue_full_waits} "
          f"in_flight={stats.events_in_flight} unsent={stats.events_unsent}")
    assert blocked, "publish returned while the broker was down"
    assert not worker.is_alive()
    assert stats.queue_full_waits > 0
    # Memory bound: the queue never held more than its 20 records.
    assert stats.events_in_flight <= 20 * EVENTS_PER_BATCH
    assert stats.events_dropped == stats.events_spilled == stats.events_delivered == 0
    assert stats.events_in_flight + stats.events_unsent == stats.events_sent
    assert stats.unaccounted() == 0


def test_unknown_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="OUTAGE_POLICY"):
        quiet_publisher(dead_settings(tmp_path, "hope"))


def test_collect_fails_when_its_events_never_reach_a_broker(tmp_path, scap_dir, sysdig):
    """`systerns collect` exits 1 (runtime failure), not 0, having delivered nothing."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTERNS_")}
    env |= {"SYSTERNS_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "SYSTERNS_OUTAGE_POLICY": "drop", "SYSTERNS_MESSAGE_TIMEOUT_MS": "2000"}
    out = subprocess.run(
        [sys.executable, "-m", "systerns", "collect", "--strict", "--scap",
         str(scap_dir / "falco" / "cat_write.scap")],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    assert out.returncode == 1, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["published"]["events_delivered"] == 0
    assert summary["published"]["events_dropped"] > 0
    assert summary["unaccounted_events"] == 0
    assert "events_not_delivered" in out.stderr
