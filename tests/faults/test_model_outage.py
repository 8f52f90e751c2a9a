"""Fault (c): the model server down for a while; judgements wait, none is lost."""

from __future__ import annotations

import time

import pytest

from systerns.cli.stack import LocalStack
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from tests.faults.conftest import processes, wait_finals, wait_log, worker_balance

pytestmark = [pytest.mark.integration, pytest.mark.slow]


#: A breaker that opens and probes fast enough for a test.
BREAKER_ENV = {"SYSTERNS_BREAKER_FAILURES": "3", "SYSTERNS_BREAKER_COOLDOWN_S": "2"}


def start_outage(stack: LocalStack, procs: dict) -> None:
    """Start the stack, take its model server away, then publish ``procs``."""
    stack.start()
    stack.stop_process("worker")
    stack.start_extra_worker("worker", stack.env() | BREAKER_ENV)
    stack.stop_process("model-server")
    pub = Publisher(Settings.from_env(stack.env()))
    for bs in procs.values():
        for b in bs:
            pub.send(b)
    pub.close()


def test_judgements_wait_behind_the_breaker_and_drain(broker, find_batches):
    procs = processes(find_batches, 4, host="model-down", stretch_s=2, renamed=False)
    # Syscalls per process: what a session counts (CPU readings that the
    # recording may hold travel too, but are not syscalls).
    total = {pid: sum(b.syscall_count() for b in bs) for pid, bs in procs.items()}

    stack = LocalStack(bootstrap=broker, idle_s=120.0)
    try:
        start_outage(stack, procs)
        time.sleep(20)  # the outage: exits are judged, the model is away
        early = wait_finals(broker, stack.topics["verdicts"], set(procs), 5)
        stack.restart_model_server()
        finals = wait_finals(broker, stack.topics["verdicts"], set(procs), 60)
    finally:
        stack.stop()
    account = worker_balance(stack.log_dir / f"worker-{stack.run_id}.log")

    w = account["worker"] if account else {}
    print(f"\nmodel_down: events_in={sum(total.values())} "
          f"events_in_final_verdicts={sum(v[0]['n_events'] for v in finals.values())} "
          f"verdicts_during_outage={len(early)} retries={w.get('model_retries')} "
          f"breaker_opened={w.get('breaker_opened')} "
          f"queued_peak={w.get('queued_peak')}")
    assert not early
    assert {pid: len(v) for pid, v in finals.items()} == dict.fromkeys(procs, 1)
    assert {pid: v[0]["n_events"] for pid, v in finals.items()} == total
    assert account is not None and account["balance"]["balanced"], account
    assert w["breaker_opened"] >= 1
    assert w["dead_letters"] == 0


def test_closed_sessions_survive_a_worker_crash_during_the_outage(broker,
                                                                 find_batches):
    """Sessions closed while the model is away outlive the worker that closed them.

    Their offsets are committed long before the model returns, so only the
    ``judging`` table's changelog can bring them back to the next worker.
    """
    procs = processes(find_batches, 4, host="crash-in-outage", stretch_s=2,
                      renamed=False)
    # Syscalls per process: what a session counts (CPU readings that the
    # recording may hold travel too, but are not syscalls).
    total = {pid: sum(b.syscall_count() for b in bs) for pid, bs in procs.items()}

    stack = LocalStack(bootstrap=broker, idle_s=120.0)
    try:
        start_outage(stack, procs)
        first_log = stack.log_dir / f"worker-{stack.run_id}.log"
        assert wait_log(first_log, "model_breaker_open", 90), "no outage seen"
        time.sleep(8)  # past Faust's commit interval: the events are committed
        stack.kill_process("worker")
        stack.start_extra_worker("worker2", stack.env() | BREAKER_ENV)
        second_log = stack.log_dir / f"worker2-{stack.run_id}.log"
        assert wait_log(second_log, "judgement_recovered", 120), "nothing recovered"
        stack.restart_model_server()
        finals = wait_finals(broker, stack.topics["verdicts"], set(procs), 90)
    finally:
        stack.stop()
    account = worker_balance(second_log)
    recovered = second_log.read_text(errors="replace").count("judgement_recovered")

    print(f"\ncrash_in_outage: events_in={sum(total.values())} "
          f"events_in_final_verdicts={sum(v[0]['n_events'] for v in finals.values())} "
          f"judgements_recovered={recovered}")
    assert set(finals) == set(procs), finals
    assert {pid: v[0]["n_events"] for pid, v in finals.items()} == total
    assert all(v[0]["trigger"] == "exit" for v in finals.values()), finals
    assert account is not None, "the restarted worker printed no balance"
