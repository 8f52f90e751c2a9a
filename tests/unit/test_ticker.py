"""Live sources publish open batches while processes run (producers/ticker.py).

No test here measures a delay. Each one makes the source wait for something
only the reader can do once it has seen a batch (release a blocked iterator,
write into a FIFO the traced shell is blocked on), so a reader that held its
batches back would never see that batch before the command ends.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from systerns.core.events import EventBatch
from systerns.producers.sysdig import ReadStats, read_capture, read_lines, sysdig_argv
from systerns.producers.ticker import TICK, follow_lines, ticking
from systerns.producers.trace import (
    TraceStats,
    iter_trace_file,
    parse_trace_file,
    trace_command,
)

needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed"
)


def test_ticking_ticks_while_the_source_blocks():
    release = threading.Event()

    def source() -> Iterator[str]:
        yield "first"
        # Blocks until the reader got a tick; fails the test rather than hang.
        assert release.wait(timeout=30), "no tick while the source was blocked"
        yield "second"

    seen = []
    for item in ticking(source(), every_s=0.05):
        seen.append(item)
        if item is TICK:
            release.set()
    assert seen[0] == "first"
    assert seen[-1] == "second"
    assert TICK in seen[1:-1]


def test_ticking_raises_what_the_source_raised_after_its_items():
    def source() -> Iterator[int]:
        yield 1
        raise OSError("pipe broke")

    got = []
    with pytest.raises(OSError, match="pipe broke"):
        got.extend(x for x in ticking(source(), every_s=60) if x is not TICK)
    assert got == [1]


def test_follow_lines_reads_a_finished_file_like_iter_trace_file(tmp_path: Path):
    path = tmp_path / "t.strace"
    path.write_bytes(b"1 2.3 read(0, \"\\xff\", 1) = 1\n\xe2\x82\n" * 20_000 + b"tail")
    got = [x for x in follow_lines(path, lambda: True, every_s=None)]
    assert got == list(iter_trace_file(path))
    assert TICK not in got


def test_a_tick_publishes_open_sysdig_batches_and_loses_nothing(scap_dir, sysdig):
    """Real capture lines with a tick after every 50: same events per process."""
    scap = scap_dir / "falco" / "psp_run_as_user_0_container.scap"
    lines = subprocess.run(sysdig_argv(scap), capture_output=True,
                           check=True).stdout.splitlines()
    ticked: list = []
    for i, line in enumerate(lines):
        ticked.append(line)
        if i % 50 == 49:
            ticked.append(TICK)
    plain = [b for b in read_lines(lines, "h", ReadStats()) if isinstance(b, EventBatch)]
    stats = ReadStats()
    cut = [b for b in read_lines(ticked, "h", stats) if isinstance(b, EventBatch)]

    def per_process(batches):
        out: dict = {}
        for b in batches:
            out.setdefault(b.process.key, []).extend(b.events)
        return out

    assert len(cut) > len(plain)
    assert per_process(cut) == per_process(plain)
    assert stats.lines == len(lines)
    assert plain == [b for b in read_capture(scap, "h") if isinstance(b, EventBatch)]


def release(fifo: Path, tries: int = 600) -> bool:
    """Write a line into the FIFO the traced shell reads; False if none reads it.

    Opening without blocking succeeds only while the shell has the other end
    open, that is, while the command still runs. It may not have reached its
    ``open`` yet when its batch arrives, hence the retries.
    """
    for _ in range(tries):
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            time.sleep(0.05)
            continue
        os.write(fd, b"go\n")
        os.close(fd)
        return True
    return False


@needs_strace
def test_collect_trace_publishes_a_quiet_process_while_it_runs(tmp_path: Path):
    """The traced shell blocks on a FIFO until the reader has seen its batch.

    The shell makes a few dozen syscalls, then ``cd``s into ``MARKDIR`` and
    blocks opening a FIFO there: no exit and no 256 events cut its batch, only
    a tick. When the batch with the ``chdir`` arrives, the test writes into the
    FIFO and the shell finishes. A collector that parsed after the command, or
    held open batches, would leave it blocked until the timeout (exit 124).
    """
    mark = tmp_path / "MARKDIR"
    mark.mkdir()
    fifo = mark / "fifo"
    os.mkfifo(fifo)
    stats = TraceStats()
    seen_while_running = False
    batches = []
    for b in trace_command(["sh", "-c", "cd MARKDIR && read x < fifo && echo $x"],
                           host="h", out_dir=tmp_path / "traces", cwd=tmp_path,
                           timeout_s=60, stats=stats, flush_every_s=0.2):
        batches.append(b)
        if not seen_while_running and any(
            e.name == "chdir" and e.arg.endswith("MARKDIR") for e in b.events
        ):
            seen_while_running = release(fifo)

    assert seen_while_running
    assert stats.exit_code == 0
    # Every event is still published exactly once: same as parsing the file.
    trace = next((tmp_path / "traces").glob("*.strace"))
    whole = [b for b in parse_trace_file(trace, host="h", cwd=str(tmp_path))
             if isinstance(b, EventBatch)]
    assert [e for b in batches for e in b.events] == [
        e for b in whole for e in b.events]


@needs_strace
def test_trace_command_without_ticks_gives_the_file_s_batches(tmp_path: Path):
    batches = list(trace_command(["sh", "-c", "ls / > /dev/null; cat /etc/hostname"],
                                 host="h", out_dir=tmp_path, cwd=tmp_path,
                                 flush_every_s=None))
    trace = next(tmp_path.glob("*.strace"))
    assert batches == [b for b in parse_trace_file(trace, host="h", cwd=str(tmp_path))
                       if isinstance(b, EventBatch)]
    assert len(batches) >= 3
