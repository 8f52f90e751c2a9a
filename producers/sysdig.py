"""Reads sysdig's JSON events (capture files or live) into per-process batches.

sysdig is run with an explicit field list (``-p``), so old captures that leave
``proc.exepath`` empty still give what the pipeline needs. Every field is
treated as hostile: types are checked, strings are decoded with replacement and
capped, and a line that cannot be read becomes an ``InputError`` the caller
dead-letters, never an exception that stops the capture.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import structlog

from systerns.core.errors import (
    DriverMissingError,
    InputError,
    ParseError,
    SourceError,
    UnknownEventError,
)
from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.syscalls import NON_SYSCALL_EVENTS, PATH_SYSCALLS, canonical
from systerns.producers.cputime import ProcWatch, release
from systerns.producers.ticker import FLUSH_EVERY_S, TICK, Tick, ticking

log = structlog.get_logger(__name__)

#: The fields requested from sysdig, in ``-p`` form.
FIELDS = (
    "evt.num", "evt.rawtime", "evt.type", "evt.dir", "evt.rawres",
    "proc.pid", "proc.ppid", "thread.tid", "proc.name", "proc.exe",
    "proc.exepath", "proc.cmdline", "container.id", "container.image",
    "fd.name", "evt.args", "evt.latency",
)
# The leading "*" makes sysdig print events that lack some of the fields (null);
# without it, sysdig silently skips them.
OUTPUT_FORMAT = "*" + " ".join(f"%{f}" for f in FIELDS)
#: Events that only have an enter ('>') direction.
ENTER_ONLY = frozenset({"procexit"})
#: sysdig filter keeping the events ``parse_line`` can keep: exit halves and the
#: enter-only events. sysdig then never formats the enter halves as JSON (most of
#: its own time) and the reader never parses them; the batches are the same.
SYSDIG_FILTER = "evt.dir=< or evt.type in ({})".format(", ".join(sorted(ENTER_ONLY)))
#: Longest wait inside one syscall taken from ``evt.latency`` (a larger value
#: is not trusted and the exit time is kept).
MAX_LATENCY_NS = 3600 * 1_000_000_000
MAX_STR = 4096
MAX_LINE_BYTES = 1 << 20
BATCH_MAX_EVENTS = 256
_ARG_PATH_RE = re.compile(r"(?:^| )(?:path|name|pathname|filename|exe|oldpath|addr)=(\S+)")


@dataclass(slots=True)
class ReadStats:
    """What a reader saw; printed at the end and exported as metrics."""

    lines: int = 0
    syscalls: int = 0
    skipped_non_syscall: int = 0
    skipped_enter: int = 0
    bad: int = 0
    batches: int = 0
    cpu_readings: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count_bad(self, reason: str) -> None:
        self.bad += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def sysdig_argv(
    scap: Path | None, *, live: bool = False, filtered: bool = True
) -> list[str]:
    """The sysdig command line for a capture file or a live capture.

    Args:
        scap: the capture file; None for a live capture.
        live: capture live (``scap`` must then be None).
        filtered: append ``SYSDIG_FILTER`` so sysdig leaves out the enter halves
            the reader would drop anyway.

    Raises:
        SourceError: sysdig is not installed.
        ValueError: neither a capture nor ``live``.
    """
    exe = shutil.which("sysdig")
    if exe is None:
        raise SourceError("sysdig is not installed (Debian package 'sysdig')")
    argv = [exe, "-j", "-p", OUTPUT_FORMAT]
    if scap is not None:
        argv[1:1] = ["-r", str(scap)]
    elif not live:
        raise ValueError("a capture file or live=True is needed")
    if filtered:
        argv.append(SYSDIG_FILTER)
    return argv


def check_live_driver() -> None:
    """Fail clearly when no sysdig kernel driver can serve a live capture.

    Never loads or downloads a driver: operators install it as documented in
    ``deploy/``.

    Raises:
        DriverMissingError: neither the kernel module nor the eBPF probe is there.
    """
    module_loaded = Path("/sys/module/scap").exists() or Path(
        "/sys/module/sysdig_probe").exists()
    probe = os.environ.get("SYSDIG_BPF_PROBE")
    if module_loaded or (probe and Path(probe).is_file()):
        return
    raise DriverMissingError(
        "live capture needs sysdig's kernel driver (scap module or eBPF probe), "
        "and none is loaded on this host. Load it as deploy/docker/collector-driver.sh "
        "and docs/operations.md describe, or "
        "record commands with `systerns collect --trace -- CMD` instead."
    )


def _str(obj: dict, key: str) -> str:
    v = obj.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        v = str(v)
    if len(v) > MAX_STR:
        v = v[:MAX_STR]
    return v


def _int(obj: dict, key: str, *, required: bool = False) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        if v is None and not required:
            return 0
        raise ParseError("bad_field", f"{key} is {type(v).__name__}, not an integer")
    return v


def parse_line(line: bytes | str, host: str) -> tuple[ProcessInfo, Syscall] | None:
    """Turn one sysdig JSON line into a process and a syscall.

    Returns:
        None for events that are not syscalls of the process (context switches,
        enter halves of syscalls that also report an exit).

    Raises:
        ParseError: not JSON, not an object, or a field of the wrong type.
        UnknownEventError: the event type is missing or not a known shape.
    """
    if len(line) > MAX_LINE_BYTES:
        raise ParseError("oversized", f"{len(line)} bytes", line[:4096])
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ParseError("not_json", str(exc), line) from exc
    if not isinstance(obj, dict):
        raise ParseError("not_object", type(obj).__name__, line)
    etype = obj.get("evt.type")
    if not isinstance(etype, str) or not etype:
        raise UnknownEventError("unknown_event", "missing evt.type", line)
    if etype in NON_SYSCALL_EVENTS:
        return None
    direction = obj.get("evt.dir")
    if direction != "<" and not (direction == ">" and etype in ENTER_ONLY):
        return None
    try:
        name = canonical(etype)
    except ValueError as exc:
        raise UnknownEventError("unknown_event", str(exc), line) from exc
    ts = _int(obj, "evt.rawtime", required=True)
    if direction == "<":
        # An exit event is stamped when the call returns; strace stamps a call
        # when it starts. Step back by the call's latency so that both sources
        # give the same gaps: time blocked in a wait stays after the wait
        # instead of landing after whatever the thread did before it.
        latency = _int(obj, "evt.latency")
        if 0 < latency <= min(MAX_LATENCY_NS, ts):
            ts -= latency
    pid = _int(obj, "proc.pid", required=True)
    tid = _int(obj, "thread.tid") or pid
    arg = ""
    if name in PATH_SYSCALLS:
        arg = _str(obj, "fd.name")
        if not arg:
            m = _ARG_PATH_RE.search(_str(obj, "evt.args"))
            if m:
                arg = m.group(1)
    comm = _str(obj, "proc.name")
    info = ProcessInfo(
        host=host,
        container_id=_str(obj, "container.id") or "host",
        pid=pid,
        ppid=_int(obj, "proc.ppid"),
        comm=comm,
        exe=_str(obj, "proc.exepath") or _str(obj, "proc.exe"),
        cmdline=_str(obj, "proc.cmdline") or comm,
        container_image=_str(obj, "container.image"),
    )
    res = _int(obj, "evt.rawres")
    return info, Syscall(ts_ns=ts, tid=tid, name=name, res=res, arg=arg[:1024])


class Batcher:
    """Groups syscalls into per-process batches in arrival order.

    A batch is cut when its process changes image (name or executable), at
    ``max_events``, on the process's exit, or when ``drain`` is called.
    """

    def __init__(self, source: str, max_events: int = BATCH_MAX_EVENTS) -> None:
        self.source = source
        self.max_events = max_events
        self._open: dict[str, tuple[ProcessInfo, list[Syscall]]] = {}

    def add(self, info: ProcessInfo, ev: Syscall) -> list[EventBatch]:
        """Add one syscall; return the batches it completed."""
        out = []
        key = info.key
        cur = self._open.get(key)
        if cur is not None and (cur[0].comm != info.comm or cur[0].exe != info.exe):
            out.append(EventBatch(cur[0], tuple(cur[1]), self.source))
            cur = None
        if cur is None:
            cur = (info, [])
            self._open[key] = cur
        cur[1].append(ev)
        if len(cur[1]) >= self.max_events or (ev.name == "exit" and ev.tid == info.pid):
            out.append(EventBatch(info, tuple(cur[1]), self.source))
            del self._open[key]
        return out

    def open_processes(self) -> list[ProcessInfo]:
        """The processes with an open batch."""
        return [info for info, _ in self._open.values()]

    def drain(self) -> list[EventBatch]:
        """Every batch still open (end of input, or a periodic flush)."""
        out = [EventBatch(i, tuple(evs), self.source) for i, evs in self._open.values()]
        self._open.clear()
        return out


def read_lines(
    lines: Iterable[bytes | str | Tick],
    host: str,
    stats: ReadStats,
    source: str = "sysdig",
    cpu: ProcWatch | None = None,
) -> Iterator[EventBatch | InputError]:
    """Batches and input errors from sysdig JSON lines, in order.

    A ``TICK`` among the lines (``producers.ticker``) publishes every open batch.
    With ``cpu`` (live capture), each tick first adds the CPU readings of the
    processes seen lately (``producers.cputime.ProcWatch``) to their batches.
    """
    batcher = Batcher(source)
    held: list = []
    latest = 0
    for line in lines:
        if line is TICK:
            if cpu is not None:
                # Readings wait until the events read have passed their time
                # (``producers.cputime.release``): syscalls made before a
                # reading are folded before it, as in a recording.
                now = time.time_ns()
                cpu.seen(batcher.open_processes(), now)
                held.extend(cpu.read(now))
                ready, held = release(held, latest, now)
                for info, ev in ready:
                    stats.cpu_readings += 1
                    for b in batcher.add(info, ev):
                        stats.batches += 1
                        yield b
            for b in batcher.drain():
                stats.batches += 1
                yield b
            continue
        stats.lines += 1
        if not line.strip():
            continue
        try:
            parsed = parse_line(line, host)
        except InputError as exc:
            stats.count_bad(exc.reason)
            if not exc.raw:
                exc.raw = line
            yield exc
            continue
        if parsed is None:
            stats.skipped_non_syscall += 1
            continue
        stats.syscalls += 1
        if cpu is not None and parsed[1].ts_ns > latest:
            latest = parsed[1].ts_ns
        for b in batcher.add(*parsed):
            stats.batches += 1
            yield b
    for b in batcher.drain():
        stats.batches += 1
        yield b


def read_capture(
    scap: Path, host: str, stats: ReadStats | None = None, *, filtered: bool = True
) -> Iterator[EventBatch | InputError]:
    """Run ``sysdig -r`` on a capture and yield its batches.

    ``filtered`` as in ``sysdig_argv``: the batches are the same either way.

    Raises:
        SourceError: sysdig failed (a truncated or unreadable capture); batches
            read before the failure have been yielded already.
    """
    stats = stats if stats is not None else ReadStats()
    if not scap.is_file():
        raise SourceError(f"capture not found: {scap}")
    argv = sysdig_argv(scap, filtered=filtered)
    log.info("capture_open", path=str(scap))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        yield from read_lines(proc.stdout, host, stats, "sysdig")
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        rc = proc.wait()
    if rc != 0:
        raise SourceError(
            f"sysdig could not read {scap} (exit {rc}): {err.strip()[:500]}"
        )
    log.info("capture_done", path=str(scap), lines=stats.lines,
             syscalls=stats.syscalls, batches=stats.batches, bad=stats.bad)


def read_live(
    host: str,
    stats: ReadStats,
    stopping=None,
    *,
    flush_every_s: float = FLUSH_EVERY_S,
) -> Iterator[EventBatch | InputError]:
    """Run ``sysdig -j`` live and yield batches until stopped.

    Open batches are published at least every ``flush_every_s`` seconds, so a
    quiet process reaches the worker while it runs.

    Raises:
        DriverMissingError: no kernel driver (checked before sysdig starts).
        SourceError: sysdig exited with an error.
    """
    check_live_driver()
    argv = sysdig_argv(None, live=True)
    log.info("live_capture_start")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None

    def lines() -> Iterator[bytes | Tick]:
        for line in ticking(proc.stdout, flush_every_s):
            yield line
            if stopping is not None and stopping.is_set():
                break

    try:
        yield from read_lines(lines(), host, stats, "sysdig-live", cpu=ProcWatch())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    if proc.returncode not in (0, -15) and not (stopping and stopping.is_set()):
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        raise SourceError(f"sysdig exited {proc.returncode}: {err.strip()[:500]}")
