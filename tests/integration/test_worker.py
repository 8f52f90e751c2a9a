"""The Faust worker on the real broker with the real model server."""

from __future__ import annotations

import time

import pytest

from systerns.cli.stack import REPO, LocalStack
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from systerns.producers.trace import trace_command
from systerns.schemas.codec import Codec
from tests.conftest import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def final_verdicts(broker: str, topic: str, pid: int, timeout_s: float = 60) -> list:
    codec = Codec("verdict")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        vs = [codec.decode(m.value()) for m in consume_all(broker, topic, timeout_s=5,
                                                            idle_s=2)]
        finals = [v for v in vs if v["pid"] == pid and v["final"]]
        if finals:
            return finals
    return []


def test_session_survives_a_killed_worker(broker, tmp_path):
    if not (REPO / "models" / "systerns").is_dir():
        pytest.fail("no exported model under models/systerns")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x5a" * (24 << 20))
    batches = list(trace_command(["sha256sum", str(blob)], host="crash-node",
                                 out_dir=tmp_path))
    target = next(b.process for b in batches if b.process.comm == "sha256sum")
    mine = [b for b in batches if b.process.pid == target.pid]
    assert len(mine) >= 4, "need a process spread over several batches"
    total = sum(b.syscall_count() for b in mine)  # CPU readings are not syscalls
    half = len(mine) // 2

    stack = LocalStack(bootstrap=broker, idle_s=120.0)
    try:
        stack.start()
        settings = Settings.from_env(stack.env())
        pub = Publisher(settings)
        for b in mine[:half]:
            pub.send(b)
        pub.close()
        # Let the worker take the first half into its table (and changelog).
        deadline = time.monotonic() + 60
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": broker, "log_level": 0})
        changelog = f"systerns-worker-{stack.run_id}-sessions-changelog"
        while time.monotonic() < deadline:
            if changelog in admin.list_topics(timeout=5).topics and consume_all(
                    broker, changelog, timeout_s=3, idle_s=1):
                break
            time.sleep(1)
        time.sleep(3)
        stack.kill_process("worker")
        stack.start_worker()
        pub = Publisher(settings)
        for b in mine[half:]:
            pub.send(b)
        pub.close()
        finals = final_verdicts(broker, stack.topics["verdicts"], target.pid, 90)
    finally:
        stack.stop()

    # Verdicts are at-least-once: a rebalance right after the restart may replay
    # the exit batch, and then the same final verdict comes twice. Each copy must
    # be the whole session (alerts, unlike verdicts, are de-duplicated by id).
    # Records re-consumed after the crash are already in the recovered state and
    # are skipped by offset, so no copy of the session is judged on its own.
    assert finals, "no final verdict after the restart"
    assert len({f["session_id"] for f in finals}) == 1, finals
    assert all(f["n_events"] == total for f in finals), (total, finals)
    assert all(f["trigger"] == "exit" for f in finals), finals
    assert all(f["process_name"] == "sha256sum" for f in finals)
