"""Helpers of the fault tests: real traced traffic, verdict and alert readers."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from systerns.cli.stack import REPO
from systerns.core.events import EventBatch, Syscall
from systerns.schemas.codec import Codec
from tests.conftest import consume_all

BASE_PID = 40_000


@pytest.fixture(scope="session")
def find_batches(tmp_path_factory) -> list[EventBatch]:
    """Batches of one real ``find`` run recorded under strace."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    if not (REPO / "models" / "systerns").is_dir():
        pytest.fail("no exported model under models/systerns")
    from systerns.producers.trace import trace_command

    out = tmp_path_factory.mktemp("trace")
    batches = [b for b in trace_command(["find", "/usr/share", "-maxdepth", "3"],
                                        host="fault-node", out_dir=out)
               if isinstance(b, EventBatch)]
    target = next(b.process for b in batches if b.process.comm == "find")
    mine = [b for b in batches if b.process.pid == target.pid]
    assert len(mine) >= 6, "need a process spread over several batches"
    return mine


def processes(base: list[EventBatch], n: int, *, host: str, stretch_s: float = 20.0,
              renamed: bool = True) -> dict[int, list[EventBatch]]:
    """``n`` processes replaying ``base``, renamed ``kworker`` (a masquerade).

    Event times are spread over ``stretch_s`` so running sessions are judged
    several times (each time the same deterministic alert id).
    """
    first = base[0].events[0].ts_ns
    last = base[-1].events[-1].ts_ns
    scale = stretch_s * 1e9 / max(1, last - first)
    out = {}
    for i in range(n):
        pid = BASE_PID + i
        batches = []
        for b in base:
            # One host each: the suppressor would merge same-named processes.
            info = dataclasses.replace(b.process, pid=pid, host=f"{host}-{i}")
            if renamed:
                info = dataclasses.replace(info, comm="kworker", exe="/usr/bin/kworker",
                                           cmdline="kworker")
            evs = tuple(Syscall(first + int((e.ts_ns - first) * scale),
                                pid if e.tid == b.process.pid else e.tid,
                                e.name, e.res, e.arg) for e in b.events)
            batches.append(EventBatch(info, evs, b.source))
        out[pid] = batches
    return out


def read_verdicts(broker: str, topic: str) -> list[dict]:
    codec = Codec("verdict")
    return [codec.decode(m.value()) for m in consume_all(broker, topic, timeout_s=8,
                                                         idle_s=2)]


def wait_finals(broker: str, topic: str, pids: set[int], timeout_s: float = 60
                ) -> dict[int, list[dict]]:
    """Final verdicts by pid, once every pid has one (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    finals: dict[int, list[dict]] = {}
    while time.monotonic() < deadline:
        finals = {}
        for v in read_verdicts(broker, topic):
            if v["final"] and v["pid"] in pids:
                finals.setdefault(v["pid"], []).append(v)
        if set(finals) >= pids:
            break
        time.sleep(1)
    return finals


def alert_ids(broker: str, topic: str) -> Counter[str]:
    """How often each alert id is on the alerts topic."""
    return Counter(m.key().decode() for m in consume_all(broker, topic, timeout_s=8,
                                                         idle_s=2))


def worker_balance(log_path: Path) -> dict | None:
    """The balance line the worker prints at exit, from its log."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        # Faust's terminal codes may precede the line.
        at = line.find('{"balance"')
        if at >= 0:
            return json.loads(line[at:])
    return None


def wait_log(path: Path, text: str, timeout_s: float = 60) -> bool:
    """Wait until a child's log holds ``text`` (a start-up event name)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return False
