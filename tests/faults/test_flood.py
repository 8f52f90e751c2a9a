"""Memory bounds under a flood of short processes (a figure, not a timing).

The worker holds at most ``SYSTERNS_MAX_SESSIONS`` sessions: past it the oldest
is judged with ``trigger=evicted``. Prints the peak RSS of the collector (a
child process publishing the flood) and of the worker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from systerns.cli.stack import REPO, LocalStack
from tests.faults.conftest import read_verdicts, worker_balance

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PROCESSES = 3000
EVENTS = 40
MAX_SESSIONS = 300

COLLECTOR = textwrap.dedent(f"""
    import json, resource
    from systerns.core.events import EventBatch, ProcessInfo, Syscall
    from systerns.core.settings import Settings
    from systerns.producers.publisher import Publisher
    pub = Publisher(Settings.from_env())
    for i in range({PROCESSES}):
        info = ProcessInfo("flood", "c", 100000 + i, 1, "sh", "/bin/sh", "sh")
        pub.send(EventBatch(info, tuple(
            Syscall(1_700_000_000_000_000_000 + i * 10**6 + k, 100000 + i,
                    "read" if k % 3 else "openat", 3, "/etc/hosts")
            for k in range({EVENTS}))))
    stats = pub.close()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"peak_rss_kb": peak_kb, "delivered": stats.events_delivered}}))
""")


def peak_rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_flood_is_bounded_by_session_eviction(broker):
    import json
    import time

    stack = LocalStack(bootstrap=broker, idle_s=4.0)
    try:
        stack.start()
        stack.stop_process("worker")
        stack.start_extra_worker("worker", {"SYSTERNS_MAX_SESSIONS": str(MAX_SESSIONS)})
        time.sleep(10)
        out = subprocess.run([sys.executable, "-c", COLLECTOR], env=stack.env(),
                             cwd=REPO, capture_output=True, text=True, timeout=120,
                             check=True)
        collector = json.loads(out.stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 60
        finals: dict[int, int] = {}
        evicted = 0
        while time.monotonic() < deadline and len(finals) < PROCESSES:
            vs = [v for v in read_verdicts(broker, stack.topics["verdicts"])
                  if v["final"]]
            finals = {}
            for v in vs:
                finals[v["pid"]] = finals.get(v["pid"], 0) + 1
            evicted = sum(v["evicted"] for v in vs)
        worker_kb = peak_rss_kb(stack.procs["worker"].pid)
    finally:
        stack.stop()
    account = worker_balance(stack.log_dir / f"worker-{stack.run_id}.log")

    print(f"\nflood: processes={PROCESSES} events_in={PROCESSES * EVENTS} "
          f"delivered={collector['delivered']} "
          f"sessionized={account and account['balance']['events_sessionized']} "
          f"final_verdicts={sum(finals.values())} evicted={evicted} "
          f"collector_peak_rss_mb={collector['peak_rss_kb'] / 1024:.0f} "
          f"worker_peak_rss_mb={worker_kb / 1024:.0f}")
    assert collector["delivered"] == PROCESSES * EVENTS
    assert account is not None and account["balance"]["balanced"], account
    assert account["balance"]["events_sessionized"] == PROCESSES * EVENTS
    assert evicted > 0
    assert finals == dict.fromkeys(range(100000, 100000 + PROCESSES), 1)
