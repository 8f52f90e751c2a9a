"""CPU time per thread, read from ``/proc`` beside the syscall stream.

A miner's hashing threads make no system calls for seconds: through syscalls
alone its process is a main thread waiting in ``select`` and writing a line to
a socket now and then, which is what ``sshd`` or ``screen`` show. What tells
them apart is CPU time, which the kernel keeps per thread. A collector that
sees a process also reads ``/proc/<pid>/task/<tid>/stat`` about once a second
and publishes what it read as ``CPU_EVENT`` events of that process (the
thread's id, and its cumulative user+system CPU time in nanoseconds as the
result), among its syscalls, in the same batches and the same schema.

Sources that cannot read ``/proc`` (a capture file read after the fact) send
none; the features say so, and models learn both cases.

Every value read here comes from processes the collector does not trust: the
``stat`` line is split after the last ``)`` (a process name may hold spaces
and parentheses), and anything unreadable is skipped.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

import structlog

from systerns.core.events import CPU_EVENT, ProcessInfo, Syscall

log = structlog.get_logger(__name__)

#: Seconds between two readings of a process tree.
SAMPLE_EVERY_S = 1.0
_TICK_NS = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)
#: A live reader holds a reading until its source's events have passed the
#: reading's time (so the syscalls made before it are folded before it, as in
#: a recording merged offline), or this long at most (a source with nothing
#: to say).
READING_HOLD_S = 3.0
#: Bytes of a followed trace read per reading at most (the rest next time).
MAX_FOLLOW_BYTES = 64 << 20
#: Threads read per process at most (a hostile process may start thousands).
MAX_TASKS = 256
_PROC = Path("/proc")


class CpuSample(NamedTuple):
    """One reading of one thread's cumulative CPU time.

    Attributes:
        ts_ns: wall-clock time of the reading, nanoseconds since the epoch.
        pid: the thread group.
        tid: the thread.
        cpu_ns: user+system CPU time of the thread since it started.
    """

    ts_ns: int
    pid: int
    tid: int
    cpu_ns: int


def host_proc() -> Path:
    """The host's ``/proc``: under ``$HOST_ROOT`` when the collector runs in a
    container with the host's root mounted there (as sysdig reads it)."""
    root = os.environ.get("HOST_ROOT", "")
    return Path(root) / "proc" if root else _PROC


def _stat_fields(raw: bytes) -> list[bytes] | None:
    # "tid (comm) S ppid ...": comm may hold anything, so split after its end.
    end = raw.rfind(b")")
    if end < 0:
        return None
    return raw[end + 2:].split()


def read_process(pid: int, ts_ns: int | None = None,
                 proc: Path = _PROC) -> list[CpuSample]:
    """Readings of every thread of a process (none when it is gone)."""
    ts = time.time_ns() if ts_ns is None else ts_ns
    out: list[CpuSample] = []
    try:
        tasks = sorted(os.listdir(proc / str(pid) / "task"))[:MAX_TASKS]
    except OSError:
        return out
    for name in tasks:
        if not name.isdigit():
            continue
        try:
            raw = (proc / str(pid) / "task" / name / "stat").read_bytes()
        except OSError:
            continue
        f = _stat_fields(raw)
        # After the comm: state(0) ppid(1) ... utime(11) stime(12). A zombie
        # (Z) or dead (X) task has ended: its reading would outlive the process.
        if f is None or len(f) < 13 or not (f[11].isdigit() and f[12].isdigit()) \
                or f[0] in (b"Z", b"X"):
            continue
        out.append(CpuSample(ts, pid, int(name), (int(f[11]) + int(f[12])) * _TICK_NS))
    return out


def parent_map(proc: Path = _PROC) -> dict[int, int]:
    """Every process's parent, read from ``/proc/<pid>/stat``."""
    parents: dict[int, int] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            raw = (proc / name / "stat").read_bytes()
        except OSError:
            continue
        f = _stat_fields(raw)
        if f and len(f) > 1 and f[1].isdigit():
            parents[int(name)] = int(f[1])
    return parents


def descendants(root: int, proc: Path = _PROC) -> list[int]:
    """``root`` and every process below it, parents first."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_map(proc).items():
        children.setdefault(ppid, []).append(pid)
    out, todo, seen = [], [root], {root}
    while todo:
        pid = todo.pop()
        out.append(pid)
        # A pid reused while /proc was listed can make a cycle: visit once.
        kids = [c for c in sorted(children.get(pid, ()), reverse=True) if c not in seen]
        seen.update(kids)
        todo.extend(kids)
    return out


class TraceFollower:
    """The thread groups a growing strace file names, read as it grows.

    strace puts each line's thread id first. A process that left the tree
    below strace (a dropper's payload, started in the background and
    reparented once the dropper exits, as droppers do) is still named there.
    Thread ids are mapped to their thread group once, from
    ``/proc/<tid>/status``.
    """

    _LINE_PID = re.compile(rb"^(\d+) ", re.M)

    def __init__(self, path: Path, proc: Path = _PROC) -> None:
        self.path = Path(path)
        self.proc = proc
        self.pids: set[int] = set()
        self._tids: dict[int, int] = {}
        self._offset = 0
        self._rest = b""

    def poll(self) -> set[int]:
        """Thread groups named so far (those whose group is still known)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(MAX_FOLLOW_BYTES)
        except OSError:
            return self.pids
        self._offset += len(chunk)
        data = self._rest + chunk
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:][-256:]
        for m in set(self._LINE_PID.findall(data[:cut])):
            tid = int(m)
            if tid in self._tids:
                continue
            tgid = self._tgid(tid)
            self._tids[tid] = tgid
            if tgid:
                self.pids.add(tgid)
        return self.pids

    def _tgid(self, tid: int) -> int:
        try:
            status = (self.proc / str(tid) / "status").read_text(errors="replace")
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("Tgid:"):
                value = line[5:].strip()
                return int(value) if value.isdigit() else 0
        return 0


class TreeSampler:
    """Reads the CPU time of a process tree in a thread, every ``every_s``.

    Used where the collector starts the program itself (a traced command, a lab
    run): the tree below the process it started is read, including processes
    that are not traced (those are dropped by the parser, which knows only the
    traced ones), and, with ``trace``, every process the trace names (a
    payload that left the tree).
    """

    def __init__(self, root_pid: int, sink: Callable[[list[CpuSample]], None],
                 every_s: float = SAMPLE_EVERY_S, trace: Path | None = None) -> None:
        self.root_pid = root_pid
        self.sink = sink
        self.every_s = every_s
        self._follow = TraceFollower(trace) if trace is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systerns-cpu-sampler",
                                        daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            ts = time.time_ns()
            out: list[CpuSample] = []
            pids = descendants(self.root_pid)
            if self._follow is not None:
                named = self._follow.poll() - set(pids)
                pids.extend(sorted(named))
            for pid in pids:
                out.extend(read_process(pid, ts))
            if out:
                try:
                    self.sink(out)
                except Exception:  # noqa: BLE001 - a broken sink stops sampling, logged
                    log.exception("cpu_sink_failed")
                    return


class ProcWatch:
    """CPU readings of the processes a live collector has seen lately.

    A live reader hands over, at each tick, the processes it has open batches
    for (those that made a syscall since the last tick); each is then read at
    every tick for ``keep_s`` seconds after it was last seen, so a miner whose
    threads stopped making syscalls is still read. A process that is gone is
    dropped at once. At most ``max_processes`` are watched (the least recently
    seen go first).
    """

    def __init__(self, keep_s: float = 60.0, max_processes: int = 4096,
                 proc: Path | None = None) -> None:
        self.keep_ns = int(keep_s * 1e9)
        self.max_processes = max_processes
        self.proc = host_proc() if proc is None else proc
        self._seen: dict[str, tuple[ProcessInfo, int]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, infos: Iterable[ProcessInfo], now_ns: int) -> None:
        """Mark processes as active now."""
        for info in infos:
            self._seen.pop(info.key, None)
            self._seen[info.key] = (info, now_ns)
        while len(self._seen) > self.max_processes:
            del self._seen[next(iter(self._seen))]

    def read(self, now_ns: int) -> list[tuple[ProcessInfo, Syscall]]:
        """One ``CPU_EVENT`` per thread of every watched process."""
        out: list[tuple[ProcessInfo, Syscall]] = []
        for key, (info, last) in list(self._seen.items()):
            samples = read_process(info.pid, now_ns, self.proc) \
                if now_ns - last <= self.keep_ns else []
            if not samples:
                del self._seen[key]
                continue
            out.extend((info, Syscall(s.ts_ns, s.tid, CPU_EVENT, s.cpu_ns, ""))
                       for s in samples)
        return out


def release(held: list, latest_ns: int, now_ns: int) -> tuple[list, list]:
    """Split held readings into (ready, still held) by ``READING_HOLD_S``.

    ``held`` holds ``CpuSample`` or ``(ProcessInfo, Syscall)`` items; a reading
    is ready once the source's latest event time reached it, or once it is
    ``READING_HOLD_S`` old.
    """
    cutoff = max(latest_ns, now_ns - int(READING_HOLD_S * 1e9))
    ready, kept = [], []
    for item in held:
        ts = item.ts_ns if isinstance(item, CpuSample) else item[1].ts_ns
        (ready if ts <= cutoff else kept).append(item)
    return ready, kept


def file_sink(fh: IO[str]) -> Callable[[list[CpuSample]], None]:
    """A sink writing readings as ``ts_ns pid tid cpu_ns`` lines."""
    def write(samples: list[CpuSample]) -> None:
        fh.write("".join(f"{s.ts_ns} {s.pid} {s.tid} {s.cpu_ns}\n" for s in samples))
        fh.flush()
    return write


def samples_path(trace: Path) -> Path:
    """Where the readings of a recorded trace are kept: beside it, ``.cpu``."""
    return Path(trace).with_suffix(".cpu")


def read_samples(path: Path) -> list[CpuSample]:
    """Readings written by ``file_sink``; malformed lines are skipped."""
    out = []
    with open(path, encoding="ascii", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 4 and all(p.isdigit() for p in parts):
                out.append(CpuSample(*(int(p) for p in parts)))
    out.sort(key=lambda s: s.ts_ns)
    return out


def stamp_ns(line: str) -> int | None:
    """The time stamp of a ``PID SEC.USEC ...`` trace line, in ns (None without one)."""
    parts = line.split(None, 2)
    if len(parts) < 2:
        return None
    try:
        return int(float(parts[1]) * 1e9)
    except (ValueError, OverflowError):  # not a stamp, or inf/nan
        return None


def merge_samples(lines: Iterable[object], samples: list[CpuSample]
                  ) -> Iterator[object]:
    """Trace lines with readings put between them in time order.

    A reading goes before the first line stamped after it (``PID SEC.USEC``);
    lines without a stamp (and ticks) pass through.
    """
    i, n = 0, len(samples)
    for line in lines:
        if i < n and isinstance(line, str):
            ts = stamp_ns(line)
            if ts is not None:
                while i < n and samples[i].ts_ns <= ts:
                    yield samples[i]
                    i += 1
        yield line
    while i < n:
        yield samples[i]
        i += 1
