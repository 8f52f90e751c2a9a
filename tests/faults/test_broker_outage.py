"""Fault (a): our own broker stopped and restarted while traffic flows.

Runs its own single-node broker on free ports (never the shared one on 9092),
started and stopped with ``scripts/kafka.sh``; its jar cache is the repository's
``.cache/kafka/libs``, linked into a temporary Kafka home.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from systerns.cli.stack import KAFKA_SCRIPT, REPO, LocalStack, free_port
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from tests.faults.conftest import processes, wait_finals, wait_log, worker_balance

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_broker(tmp_path):
    libs = REPO / ".cache" / "kafka" / "libs"
    if not libs.is_dir():
        pytest.skip("no Kafka jars in .cache/kafka/libs: run scripts/kafka.sh fetch")
    home = tmp_path / "kafka"
    home.mkdir()
    (home / "libs").symlink_to(libs)
    port = free_port()
    env = os.environ | {"SYSTERNS_KAFKA_HOME": str(home),
                        "SYSTERNS_KAFKA_PORT": str(port),
                        "SYSTERNS_KAFKA_CONTROLLER_PORT": str(free_port()),
                        "SYSTERNS_EVENTS_PARTITIONS": "3"}

    def kafka(action: str) -> None:
        subprocess.run(["bash", str(KAFKA_SCRIPT), action], env=env, check=True,
                       timeout=120, capture_output=True)

    kafka("start")
    try:
        yield f"127.0.0.1:{port}", kafka
    finally:
        kafka("stop")


def test_broker_restart_loses_no_event(own_broker, find_batches):
    bootstrap, kafka = own_broker
    procs = processes(find_batches, 3, host="outage", stretch_s=10, renamed=False)
    # Syscalls per process: what a session counts (CPU readings that the
    # recording may hold travel too, but are not syscalls).
    total = {pid: sum(b.syscall_count() for b in bs) for pid, bs in procs.items()}
    order = [bs[i] for i in range(len(find_batches)) for bs in procs.values()]

    stack = LocalStack(bootstrap=bootstrap, idle_s=120.0)
    try:
        stack.start()
        # The outage must hit a running worker: Faust gives up when the broker
        # is away at boot (see docs/faults.md).
        assert wait_log(stack.log_dir / f"worker-{stack.run_id}.log",
                        "alert_index_loaded", 90), "worker did not start"
        pub = Publisher(Settings.from_env(stack.env() | {
            "SYSTERNS_OUTAGE_POLICY": "block"}), extra={"log_level": 0})

        def produce() -> None:
            for b in order:
                pub.send(b)
                time.sleep(0.05)

        sender = threading.Thread(target=produce)
        sender.start()
        time.sleep(3)
        kafka("stop")
        time.sleep(5)
        kafka("start")
        sender.join(timeout=120)
        stats = pub.close(timeout_s=60)
        finals = wait_finals(bootstrap, stack.topics["verdicts"], set(procs), 90)
    finally:
        stack.stop()
    account = worker_balance(stack.log_dir / f"worker-{stack.run_id}.log")

    print(f"\nbroker_outage: events_in={sum(total.values())} "
          f"delivered={stats.events_delivered} "
          f"sessionized={account and account['balance']['events_sessionized']} "
          f"events_in_final_verdicts={sum(v[0]['n_events'] for v in finals.values())}")
    # The collector counts every event it carries, readings included.
    sent = sum(len(b) for bs in procs.values() for b in bs)
    assert stats.events_delivered == stats.events_sent == sent
    assert stats.unaccounted() == 0
    assert {pid: len(v) for pid, v in finals.items()} == dict.fromkeys(procs, 1)
    assert {pid: v[0]["n_events"] for pid, v in finals.items()} == total
    assert account is not None and account["balance"]["balanced"], account
