"""Trace files of lab runs: running a traced harness, and what a manifest says of a trace."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

from systerns.core.errors import SourceError
from systerns.producers.cputime import TreeSampler, file_sink, samples_path

_PID_RE = re.compile(rb"^(\d+) ")


def hash_trace(path: Path) -> tuple[str, int, int, int | None]:
    """SHA-256, size in bytes, line count and first pid of a trace file."""
    h = hashlib.sha256()
    lines = 0
    with open(path, "rb") as fh:
        m = _PID_RE.match(fh.readline())
        root_pid = int(m.group(1)) if m else None
        fh.seek(0)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            lines += chunk.count(b"\n")
    return h.hexdigest(), path.stat().st_size, lines, root_pid


def trace_facts(trace: Path, traces: Path, exit_code: int, duration_s: float) -> dict:
    """The manifest fields every run has about its trace and how it ended.

    A run recorded with CPU readings (``producers.cputime``) also names their
    file, its checksum and how many readings it holds.
    """
    sha, size, lines, root_pid = hash_trace(trace)
    cpu: dict = {}
    cpu_file = samples_path(trace)
    if cpu_file.is_file():
        cpu_sha, _, cpu_lines, _ = hash_trace(cpu_file)
        cpu = {"cpu": str(cpu_file.relative_to(traces.parent)), "cpu_sha256": cpu_sha,
               "cpu_readings": cpu_lines}
    return cpu | {
        "trace": str(trace.relative_to(traces.parent)),
        "sha256": sha,
        "trace_bytes": size,
        "trace_lines": lines,
        "root_pid": root_pid,
        "exit_code": exit_code,
        "duration_s": round(duration_s, 3),
    }


def run_harness(cmd: list[str], *, env: dict[str, str], cwd: Path, trace: Path,
                run_id: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run a harness that writes ``trace``; return its result and wall seconds.

    The CPU time of every thread below the harness is read about once a second
    into the trace's ``.cpu`` file (``producers.cputime``).

    Raises:
        SourceError: the harness left no trace, or an empty one.
    """
    trace.unlink(missing_ok=True)
    t0 = time.monotonic()
    with open(samples_path(trace), "w", encoding="ascii") as cpu_fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            with TreeSampler(proc.pid, file_sink(cpu_fh), trace=trace):
                out, err = proc.communicate()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    duration_s = time.monotonic() - t0
    if not trace.is_file() or trace.stat().st_size == 0:
        raise SourceError(
            f"no trace for {run_id}: rc={done.returncode} "
            f"{done.stderr.decode(errors='replace')[-300:]}"
        )
    return done, duration_s
