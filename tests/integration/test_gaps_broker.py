"""The gap tracker's reads against the real broker: committed offsets, ranges, expiry."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from systerns.streams.gaps import OffsetTracker

pytestmark = pytest.mark.integration


def _produce(broker: str, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for i in range(n):
        p.produce(topic, value=f"r{i}".encode(), partition=1)
    assert p.flush(30) == 0


def test_tracker_reads_committed_offsets_ranges_and_expired_records(broker, topics):
    topic = topics["events"]
    group = f"g-{uuid.uuid4().hex[:8]}"
    _produce(broker, topic, 20)
    tracker = OffsetTracker(topic, {"bootstrap.servers": broker}, group)
    try:
        # Nothing committed: the partition's first offset.
        assert tracker.committed([1]) == {1: 0}
        c = Consumer({"bootstrap.servers": broker, "group.id": group,
                      "enable.auto.commit": False, "log_level": 0})
        c.commit(offsets=[TopicPartition(topic, 1, 12)], asynchronous=False)
        c.close()
        assert tracker.committed([1]) == {1: 12}

        got, expired = tracker.read(1, 5, 9)
        assert got == [(o, f"r{o}".encode()) for o in range(5, 9)] and expired == 0

        # Records below the log start are counted as expired, the rest are read.
        admin = AdminClient({"bootstrap.servers": broker})
        for f in admin.delete_records([TopicPartition(topic, 1, 10)]).values():
            f.result(timeout=30)
        got, expired = tracker.read(1, 6, 13)
        assert [o for o, _v in got] == [10, 11, 12] and expired == 4

        # A step that skipped offset 15 gets it back in place.
        step = [(1, o, f"r{o}".encode(), "ev") for o in (12, 13, 14, 16, 17)]
        tracker.next = {1: 12}
        filled = tracker.fill(step)
        assert [r[1] for r in filled.records] == [12, 13, 14, 15, 16, 17]
        assert filled.records[3] == (1, 15, b"r15", "ev")
    finally:
        tracker.close()
