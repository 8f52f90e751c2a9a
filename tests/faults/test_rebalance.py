"""Fault (d): two workers in one group; one leaves (SIGTERM), sessions go on."""

from __future__ import annotations

import time

import pytest

from systerns.cli.stack import LocalStack
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from tests.faults.conftest import processes, wait_finals, wait_log, worker_balance

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sessions_survive_a_worker_leaving_the_group(broker, find_batches):
    procs = processes(find_batches, 6, host="rebalance", stretch_s=10)
    # Syscalls per process: what a session counts (CPU readings that the
    # recording may hold travel too, but are not syscalls).
    total = {pid: sum(b.syscall_count() for b in bs) for pid, bs in procs.items()}
    half = len(find_batches) // 2

    stack = LocalStack(bootstrap=broker, idle_s=120.0)
    try:
        stack.start()
        stack.start_extra_worker("worker-2")
        for name in ("worker", "worker-2"):
            assert wait_log(stack.log_dir / f"{name}-{stack.run_id}.log",
                            "alert_index_loaded", 90), f"{name} did not start"
        time.sleep(8)  # the second join's rebalance settles
        settings = Settings.from_env(stack.env())
        pub = Publisher(settings)
        for bs in procs.values():
            for b in bs[:half]:
                pub.send(b)
        pub.close()
        time.sleep(8)
        code = stack.stop_process("worker-2")
        pub = Publisher(settings)
        for bs in procs.values():
            for b in bs[half:]:
                pub.send(b)
        pub.close()
        finals = wait_finals(broker, stack.topics["verdicts"], set(procs), 90)
    finally:
        stack.stop()
    left = worker_balance(stack.log_dir / f"worker-2-{stack.run_id}.log")
    stayed = worker_balance(stack.log_dir / f"worker-{stack.run_id}.log")

    print(f"\nrebalance: events_in={sum(total.values())} "
          f"events_in_final_verdicts={sum(v[0]['n_events'] for v in finals.values())} "
          f"leaver_records={left and left['balance']['records_in']} "
          f"stayer_records={stayed and stayed['balance']['records_in']} exit={code}")
    assert left is not None and left["balance"]["records_in"] > 0, "no work moved"
    assert left["balance"]["balanced"] and stayed["balance"]["balanced"]
    assert {pid: len(v) for pid, v in finals.items()} == dict.fromkeys(procs, 1)
    assert {pid: v[0]["n_events"] for pid, v in finals.items()} == total
