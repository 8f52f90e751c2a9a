"""Shared fixtures: paths to the real data, and the local broker for integration."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SYSTERNS_SHARED_DATA", REPO.parent / "shared" / "data"))
SCAP = SHARED / "scap"
BOOTSTRAP = os.environ.get("SYSTERNS_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def _broker_up() -> bool:
    host, port = BOOTSTRAP.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def scap_dir() -> Path:
    if not SCAP.is_dir():
        pytest.skip(f"real captures not found at {SCAP}")
    return SCAP


@pytest.fixture(scope="session")
def sysdig() -> str:
    exe = shutil.which("sysdig")
    if exe is None:
        pytest.skip("sysdig not installed")
    return exe


@pytest.fixture(scope="session")
def broker() -> str:
    """The broker from scripts/kafka.sh; CI sets SYSTERNS_REQUIRE_BROKER=1."""
    if not _broker_up():
        if os.environ.get("SYSTERNS_REQUIRE_BROKER") == "1":
            pytest.fail(f"no Kafka broker at {BOOTSTRAP}: run scripts/kafka.sh start")
        pytest.skip(f"no Kafka broker at {BOOTSTRAP}")
    return BOOTSTRAP


@pytest.fixture
def topics(broker: str):
    """Fresh topic names for one test, created with 3 partitions, deleted after."""
    from confluent_kafka.admin import AdminClient, NewTopic

    suffix = uuid.uuid4().hex[:8]
    names = {k: f"t-{k}-{suffix}" for k in ("events", "verdicts", "alerts", "deadletter")}
    admin = AdminClient({"bootstrap.servers": broker, "log_level": 0})
    futs = admin.create_topics([NewTopic(n, num_partitions=3, replication_factor=1)
                                for n in names.values()])
    for f in futs.values():
        f.result(timeout=30)
    yield names
    admin.delete_topics(list(names.values()))


def consume_all(broker: str, topic: str, *, expect: int | None = None,
                timeout_s: float = 30.0, idle_s: float = 3.0) -> list:
    """Every message of a topic from the start.

    With ``expect``, stops once that many arrived. Without, reads up to the high
    watermarks of every partition as they were when called (not "until quiet":
    under load one partition's fetch can lag another's by seconds). ``idle_s``
    is kept for callers and no longer used to stop early.
    """
    import time

    from confluent_kafka import Consumer, TopicPartition

    from systerns.streams.offsets import watermarks

    c = Consumer({"bootstrap.servers": broker, "group.id": f"t-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "log_level": 0})
    out, start = [], time.monotonic()
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        parts = sorted(md.partitions) if md is not None and md.partitions else []
        ends = {p: watermarks(c, topic, p)[1] for p in parts}
        todo = {p for p, hi in ends.items() if hi > 0}
        if expect is None and not todo:
            return out
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        while time.monotonic() - start < timeout_s:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(msg)
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                todo.discard(msg.partition())
            if expect is not None and len(out) >= expect:
                break
            if expect is None and not todo:
                break
    finally:
        c.close()
    return out
