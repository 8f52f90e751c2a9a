"""Fault (b): a worker SIGKILLed mid-sessions resumes them; no alert id twice."""

from __future__ import annotations

import dataclasses
import time

import pytest

from systerns.cli.stack import LocalStack
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from tests.faults.conftest import alert_ids, processes, wait_finals, worker_balance

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_killed_worker_resumes_sessions_without_duplicate_alerts(broker, find_batches):
    procs = processes(find_batches, 3, host="crash-node", stretch_s=30)
    # Syscalls per process: what a session counts (CPU readings that the
    # recording may hold travel too, but are not syscalls).
    total = {pid: sum(b.syscall_count() for b in bs) for pid, bs in procs.items()}
    half = len(find_batches) // 2

    stack = LocalStack(bootstrap=broker, idle_s=120.0)
    try:
        stack.start()
        settings = Settings.from_env(stack.env())
        pub = Publisher(settings)
        for bs in procs.values():
            for b in bs[:half]:
                pub.send(b)
        pub.close()
        # Running judgements raise the masquerading alerts before the crash.
        deadline = time.monotonic() + 60
        before = alert_ids(broker, stack.topics["alerts"])
        while not before and time.monotonic() < deadline:
            before = alert_ids(broker, stack.topics["alerts"])
        time.sleep(4)  # past Faust's commit interval
        stack.kill_process("worker")
        stack.start_worker()
        pub = Publisher(settings)
        for bs in procs.values():
            for b in bs[half:]:
                pub.send(b)
        pub.close()
        finals = wait_finals(broker, stack.topics["verdicts"], set(procs), 90)
        after = alert_ids(broker, stack.topics["alerts"])
    finally:
        stack.stop()
    account = worker_balance(stack.log_dir / f"worker-{stack.run_id}.log")

    dups = {k: n for k, n in after.items() if n > 1}
    print(f"\ncrash: events_in={sum(total.values())} "
          f"events_in_final_verdicts={sum(v[0]['n_events'] for v in finals.values())} "
          f"alerts_before_kill={len(before)} alerts={sum(after.values())} "
          f"duplicate_alert_ids={len(dups)} "
          f"repeats_stopped_by_index="
          f"{account and account['worker']['duplicate_alerts']}")
    assert before, "no alert before the kill: the test proves nothing"
    assert {pid: len(v) for pid, v in finals.items()} == dict.fromkeys(procs, 1)
    assert {pid: v[0]["n_events"] for pid, v in finals.items()} == total
    assert not dups
    # The restarted worker judged the resumed sessions again and the index
    # (not its fresh memory) held the repeated ids back.
    assert account is not None and account["balance"]["balanced"], account
    assert account["worker"]["duplicate_alerts"] >= 1


def test_open_incident_outlives_a_killed_worker(broker, find_batches):
    """A second alert of an open incident is merged into it after a restart.

    Two runs of the same renamed program on one host, a worker SIGKILLed
    between them: the second run's alert (another session, another alert id)
    belongs to the incident the first one opened, which only the incidents
    saved on the alert-index topic can tell the restarted worker.
    """
    first, second = (
        [dataclasses.replace(b, process=dataclasses.replace(b.process,
                                                            host="incident-node"))
         for b in bs]
        for bs in processes(find_batches, 2, host="incident-node",
                            stretch_s=4).values())

    stack = LocalStack(bootstrap=broker, idle_s=120.0)
    try:
        stack.start()
        settings = Settings.from_env(stack.env())
        pub = Publisher(settings)
        for b in first:
            pub.send(b)
        pub.close()
        deadline = time.monotonic() + 150
        before = alert_ids(broker, stack.topics["alerts"])
        while not before and time.monotonic() < deadline:
            before = alert_ids(broker, stack.topics["alerts"])
        time.sleep(4)  # the incident is written right after the alert
        stack.kill_process("worker")
        stack.start_extra_worker("worker2")
        pub = Publisher(settings)
        for b in second:
            pub.send(b)
        pub.close()
        pid = second[0].process.pid
        finals = wait_finals(broker, stack.topics["verdicts"], {pid}, 90)
        after = alert_ids(broker, stack.topics["alerts"])
    finally:
        stack.stop()
    account = worker_balance(stack.log_dir / f"worker2-{stack.run_id}.log")

    print(f"\nincident_after_crash: alerts_before={len(before)} "
          f"alerts_after={len(after)} "
          f"suppressed_by_restarted_worker="
          f"{account and account['worker']['suppressed']}")
    assert len(before) == 1, before
    assert pid in finals, "the second run was never judged"
    assert after == before, "the restarted worker opened a second incident"
    assert account is not None and account["worker"]["suppressed"] >= 1, account
