"""Fault (c): the model server down for a while; judgements wait, none is lost."""

from __future__ import annotations

import time

import pytest

from systerns.cli.stack import LocalStack
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from tests.faults.conftest import processes, wait_finals, worker_balance

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_judgements_wait_behind_the_breaker_and_drain(broker, find_batches,
                                                      monkeypatch):
    procs = processes(find_batches, 4, host="model-down", stretch_s=2, renamed=False)
    total = {pid: sum(len(b) for b in bs) for pid, bs in procs.items()}
    monkeypatch.setenv("SYSTERNS_BREAKER_FAILURES", "3")
    monkeypatch.setenv("SYSTERNS_BREAKER_COOLDOWN_S", "2")

    stack = LocalStack(bootstrap=broker, idle_s=120.0)
    try:
        stack.start()
        env = stack.env() | {"SYSTERNS_BREAKER_FAILURES": "3",
                             "SYSTERNS_BREAKER_COOLDOWN_S": "2"}
        stack.stop_process("worker")
        stack.start_extra_worker("worker", env)
        stack.stop_process("model-server")
        pub = Publisher(Settings.from_env(stack.env()))
        for bs in procs.values():
            for b in bs:
                pub.send(b)
        pub.close()
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
