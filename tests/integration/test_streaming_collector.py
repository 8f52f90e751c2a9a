"""A running traced process is judged while it runs, with the default idle gap.

``systerns collect --trace`` parses while strace writes and publishes open
batches every second, so the worker's ``running`` judgement (due
``first_judge_s`` after the session starts) fires while the process still
runs, even with the default ``idle_s`` of 30 s. The traced process waits on a
FIFO the test writes into only after it has read that verdict, so the verdict
came while the process ran; nothing here measures how long it took (the
end-to-end benchmark does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from systerns.cli.stack import REPO, LocalStack
from systerns.core.sessions import SessionPolicy
from systerns.schemas.codec import Codec
from tests.conftest import consume_all
from tests.unit.test_ticker import release

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Makes a few syscalls 4 s in (after the worker's first_judge_s of 3 s), then
#: waits on a FIFO in one select() for at most 60 s. Its session's batch stays
#: open below 256 events with no exit: only a timed flush publishes it while
#: the process runs; a collector that published only at 256 events or at exit
#: would show the worker nothing but the final batch, and no running verdict.
WAITER = (
    "import os, select, time\n"
    "time.sleep(4)\n"
    "os.path.exists('MARK')\n"
    "fd = os.open('fifo', os.O_RDONLY | os.O_NONBLOCK)\n"
    "select.select([fd], [], [], 60)\n"
)


def test_a_running_traced_process_is_judged_before_it_exits(broker, tmp_path):
    if not (REPO / "models" / "systerns").is_dir():
        pytest.fail("no exported model under models/systerns")
    host = f"stream-{uuid.uuid4().hex[:6]}"
    idle_s = SessionPolicy().idle_s
    assert idle_s >= 30
    os.mkfifo(tmp_path / "fifo")
    stack = LocalStack(bootstrap=broker, idle_s=idle_s)
    codec = Codec("verdict")
    collector = None
    try:
        stack.start()
        collector = subprocess.Popen(
            [sys.executable, "-m", "systerns", "collect", "--trace", "--host", host,
             "--trace-dir", str(tmp_path / "traces"), "--",
             sys.executable, "-c", WAITER],
            env=stack.env(), cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)

        running: list[dict] = []
        deadline = time.monotonic() + 240
        while not running and time.monotonic() < deadline:
            if collector.poll() is not None:
                break
            verdicts = [codec.decode(m.value()) for m in consume_all(
                broker, stack.topics["verdicts"], timeout_s=5)]
            running = [v for v in verdicts if v["host"] == host and not v["final"]]
            if not running:
                time.sleep(1)
        still_running = release(tmp_path / "fifo", tries=20)
        out, err = collector.communicate(timeout=120)
    finally:
        if collector is not None and collector.poll() is None:
            collector.kill()
            collector.wait()
        stack.stop()

    assert running, f"no verdict while the traced process ran: {err[-2000:]!r}"
    assert still_running
    assert running[0]["trigger"] == "running"
    assert running[0]["n_events"] >= SessionPolicy().min_events
    assert collector.returncode == 0, err[-2000:]
