"""Records commands under strace and reads the trace back as syscall event batches.

For hosts without sysdig's kernel driver. ``record`` runs a command under
``strace -f -ttt -q -s 256 -e trace=all -o FILE``; ``parse_trace`` turns the
file's lines into the same ``EventBatch`` stream the sysdig reader produces, so
the sessionizer and the model cannot tell the two sources apart.

Process identity mirrors sysdig: ``comm`` is the basename of the executed file cut
to 15 characters (the kernel's comm), ``exe`` the executed path resolved against
the tracked working directory (the sysdig reader fills ``exe`` from
``proc.exepath``), ``cmdline`` is comm followed by argv[1:] (sysdig's
``proc.cmdline``). argv[0] is never trusted for identity.

Every byte of a trace is hostile: strace's escapes are decoded with replacement,
control characters in identity strings become ``?``, strings are capped, and a
line that cannot be read is yielded as a ``ParseError`` for the dead letters,
never raised.
"""

from __future__ import annotations

import collections
import errno
import os
import posixpath
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from systerns.core.errors import InputError, ParseError, SourceError
from systerns.core.events import CPU_EVENT, EventBatch, ProcessInfo, Syscall
from systerns.core.redact import clean_cmdline
from systerns.core.syscalls import PATH_SYSCALLS, canonical
from systerns.producers.cputime import (
    CpuSample,
    TreeSampler,
    merge_samples,
    read_samples,
    release,
    samples_path,
    stamp_ns,
)
from systerns.producers.ticker import FLUSH_EVERY_S, TICK, Tick, follow_lines

log = structlog.get_logger(__name__)

#: strace options. ``-q`` (not ``-qq``) so ``+++ exited with N +++`` stays in the
#: trace: it is the only exit record of a process killed by a signal.
STRACE_OPTIONS: tuple[str, ...] = ("-f", "-ttt", "-q", "-s", "256", "-e", "trace=all")
BATCH_MAX_EVENTS = 256
MAX_CMDLINE = 4096
MAX_EXE = 1024
MAX_ARG = 1024
MAX_RAW = 4096
#: Longer lines are not strace output (strace caps strings at -s 256).
MAX_LINE_CHARS = 1 << 20
_PATH_SCAN_CHARS = 8192
COMM_LEN = 15
#: Seconds between the SIGINT of a timeout and the SIGKILL that follows it.
KILL_GRACE_S = 5.0
_NAME_CACHE_MAX = 4096

_RES = r"(-?\d+|0x[0-9a-f]+|\?)(?: ([A-Z][A-Z0-9_]*))?(?: .*)?"
# The greedy argument group backtracks from the line's end, so the last
# ") = RES" wins and a hostile string holding ") = 0" cannot end the call early.
_CALL_RE = re.compile(r"(\d+) +(\d+)\.(\d+) ([a-z_][a-z0-9_]*)\((.*)\) *= " + _RES)
_RESUMED_RE = re.compile(
    r"(\d+) +(\d+)\.(\d+) <\.\.\. ([a-z_][a-z0-9_]*) resumed>(.*)\) *= " + _RES
)
_UNFINISHED_RE = re.compile(
    r"(\d+) +(\d+)\.(\d+) (?:([a-z_][a-z0-9_]*)\((.*)"
    r"|<\.\.\. ([a-z_][a-z0-9_]*) resumed>(.*)) <unfinished \.\.\.>"
)
_HEAD_RE = re.compile(r"(\d+) +(\d+)\.(\d+) (.*)")
_EXITED_RE = re.compile(r"\+\+\+ (?:exited with (\d+)|killed by (SIG[A-Z0-9+]+)).*")
_QSTR_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ARGV_ITEM_RE = re.compile(r'\s*"((?:[^"\\]|\\.)*)"(?:\.\.\.)?\s*([,\]])')
_INET_RE = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([0-9.]+)"\)')
_INET6_RE = re.compile(
    r'sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([0-9a-fA-F:.]+)"'
)
_UNIX_RE = re.compile(r'sun_path=(@?)"((?:[^"\\]|\\.)*)"')
_CLONE_PARENT_RE = re.compile(r"CLONE_PARENT\b")
_ESC_RE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.S)
_SIMPLE_ESC = {
    b"n": b"\n",
    b"t": b"\t",
    b"r": b"\r",
    b"v": b"\v",
    b"f": b"\f",
    b"a": b"\a",
    b"b": b"\b",
    b"e": b"\x1b",
}
_CTRL = {c: "?" for c in [*range(32), 127]}
_ERRNO: dict[str, int] = {name: num for num, name in errno.errorcode.items()}
_SIGNUM: dict[str, int] = {s.name: int(s) for s in signal.Signals}
_SOCKET_CALLS = frozenset({"connect", "bind", "send"})
_CLONE_RAW = frozenset({"clone", "clone3"})
#: Canonical names that change the parser's view of processes.
_SPECIAL_NAMES = frozenset({"clone", "execve", "chdir", "fchdir"})


@dataclass(slots=True)
class TraceStats:
    """What one parse saw; the collector logs it and exports it as metrics."""

    lines: int = 0
    syscalls: int = 0
    batches: int = 0
    bad: int = 0
    exits: int = 0
    dropped_after_exit: int = 0
    cpu_samples: int = 0
    exit_code: int | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def count_bad(self, reason: str) -> None:
        """Count one unreadable line under its reason."""
        self.bad += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


class _Proc:
    """A thread group being parsed: its identity and its open batch."""

    __slots__ = ("pid", "info", "buf", "closed", "cwd")

    def __init__(self, info: ProcessInfo, cwd: str | None) -> None:
        self.pid = info.pid
        self.info = info
        self.buf: list[Syscall] = []
        self.closed = False
        self.cwd = cwd


def _esc(m: re.Match[bytes]) -> bytes:
    e = m.group(1)
    if len(e) == 3 and e[:1] == b"x":
        return bytes([int(e[1:], 16)])
    if e[:1].isdigit() and e[:1] not in (b"8", b"9"):
        return bytes([int(e, 8) & 0xFF])
    return _SIMPLE_ESC.get(e, e)


def unescape(s: str) -> str:
    """Decode one strace string body (C escapes, octal, hex) to text.

    Invalid UTF-8 becomes U+FFFD; the result is never evaluated.
    """
    if "\\" not in s:
        return s
    raw = _ESC_RE.sub(_esc, s.encode("utf-8", "replace"))
    return raw.decode("utf-8", "replace")


def _clean(s: str, cap: int) -> str:
    return s[:cap].translate(_CTRL)


def _first_path(args: str, cwd: str | None) -> tuple[str, int]:
    """First quoted string of ``args`` (resolved when relative) and where it ends."""
    # strace caps strings at 256 bytes (1 KiB escaped), so a path starts early.
    m = _QSTR_RE.search(args, 0, _PATH_SCAN_CHARS)
    if m is None:
        return "", 0
    path = unescape(m.group(1))[:MAX_ARG]
    if path and path[0] != "/" and cwd is not None:
        # Only AT_FDCWD (or no dirfd at all) is relative to the working directory.
        if m.start() == 0 or args.startswith("AT_FDCWD"):
            path = posixpath.normpath(posixpath.join(cwd, path))[:MAX_ARG]
    return path.translate(_CTRL), m.end()


def _socket_addr(args: str) -> str:
    """An address as sysdig's fd.name shows it: ``ip:port`` or a unix path."""
    if "sa_family=" not in args:
        return ""
    m = _INET_RE.search(args)
    if m:
        return f"{m.group(2)}:{m.group(1)}"
    m = _INET6_RE.search(args)
    if m:
        return f"{m.group(2)}:{m.group(1)}"
    m = _UNIX_RE.search(args)
    if m:
        return _clean(m.group(1) + unescape(m.group(2)), MAX_ARG)
    return ""


def _parse_argv(args: str, pos: int) -> list[str]:
    """The ``[...]`` string array of an execve starting after ``pos``."""
    i = args.find("[", pos)
    if i < 0:
        return []
    i += 1
    out: list[str] = []
    total = 0
    while total < MAX_CMDLINE:
        m = _ARGV_ITEM_RE.match(args, i)
        if m is None:
            break
        item = unescape(m.group(1))
        out.append(item)
        total += len(item) + 1
        if m.group(2) == "]":
            break
        i = m.end()
    return out


def _ts_ns(sec: str, frac: str) -> int:
    if len(frac) == 6:
        return int(sec) * 1_000_000_000 + int(frac) * 1000
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def parse_trace(
    lines: Iterable[str | Tick],
    *,
    host: str,
    container_id: str = "host",
    source_label: str = "strace",
    root_pid: int | None = None,
    cwd: str | None = None,
    stats: TraceStats | None = None,
) -> Iterator[EventBatch | InputError]:
    """Turn ``strace -f -ttt`` lines into per-process event batches.

    Threads are folded into their thread group (``clone`` with CLONE_THREAD); other
    clones, ``fork`` and ``vfork`` start a process whose ppid is the parent's
    thread group. ``<unfinished ...>`` / ``<... resumed>`` halves are merged
    (the event keeps the time the call started). A thread-group leader's
    ``+++ exited/killed +++`` adds an ``exit`` event unless the leader already
    called ``exit_group``; events a process makes after that are dropped. Signal
    lines are skipped.

    A batch is cut when its process replaces its image (a successful ``execve``,
    which opens the new batch), at ``BATCH_MAX_EVENTS``, at exit, at the end,
    and at each ``TICK`` among the lines (``producers.ticker``), which cuts
    every open batch.

    Args:
        lines: trace lines, with or without their newline, and ticks.
        host: host name put in every ``ProcessInfo``.
        container_id: container of the traced command.
        source_label: ``EventBatch.source``.
        root_pid: pid of the traced command; the first pid seen when None.
        cwd: working directory of the traced command, used to make relative paths
            absolute as sysdig shows them; relative paths stay relative when None.
        stats: counters to fill.

    Yields:
        Batches, and a ``ParseError`` (not raised) for each unreadable line.
    """
    st = stats if stats is not None else TraceStats()
    threads: dict[int, _Proc] = {}
    procs: dict[int, _Proc] = {}  # open thread groups, in creation order
    pending: dict[int, tuple[str, int, str]] = {}
    pending_clones: dict[int, bool] = {}
    names: dict[str, str] = {}
    out: list[EventBatch | InputError] = []
    root = root_pid

    def flush(p: _Proc) -> None:
        if p.buf:
            out.append(EventBatch(p.info, tuple(p.buf), source_label))
            st.batches += 1
            p.buf = []

    def new_proc(
        pid: int, ppid: int, like: ProcessInfo | None, pcwd: str | None
    ) -> _Proc:
        if like is None:
            info = ProcessInfo(host, container_id, pid, ppid, "", "", "")
        else:
            info = replace(like, pid=pid, ppid=ppid)
        p = _Proc(info, pcwd)
        old = procs.pop(pid, None)
        if old is not None:
            flush(old)
        procs[pid] = p
        threads[pid] = p
        return p

    def adopt(tid: int) -> _Proc:
        # strace prints a clone's entry before any line of the new task, so an
        # unknown tid belongs to the latest clone still waiting for its result.
        nonlocal root
        while pending_clones:
            ptid, is_thread = pending_clones.popitem()
            parent = threads.get(ptid)
            if parent is None:
                continue
            if is_thread:
                threads[tid] = parent
                return parent
            return new_proc(tid, parent.pid, parent.info, parent.cwd)
        if root is None:
            root = tid
        return new_proc(tid, 0, None, cwd if tid == root else None)

    def on_clone(p: _Proc, tid: int, raw: str, args: str, child: int) -> None:
        pending_clones.pop(tid, None)
        is_thread = raw in _CLONE_RAW and "CLONE_THREAD" in args
        existing = threads.get(child)
        if is_thread:
            if existing is not p:
                if existing is not None and existing.pid == child:
                    flush(existing)
                    procs.pop(child, None)
                threads[child] = p
            return
        ppid = p.pid
        if raw in _CLONE_RAW and _CLONE_PARENT_RE.search(args):
            ppid = p.info.ppid
        if existing is not None and existing.pid == child and not existing.closed:
            if existing.info.ppid != ppid:
                existing.info = replace(existing.info, ppid=ppid)
            return
        new_proc(child, ppid, p.info, p.cwd)

    def on_exec(p: _Proc, args: str, ev_path: str, end: int) -> None:
        argv = _parse_argv(args, end)
        base = ev_path.rsplit("/", 1)[-1] if ev_path else ""
        if not base and argv:
            base = argv[0].rsplit("/", 1)[-1]
        comm = _clean(base, COMM_LEN)
        cmdline = " ".join([comm, *argv[1:]])
        flush(p)
        p.info = ProcessInfo(
            host,
            container_id,
            p.pid,
            p.info.ppid,
            comm,
            _clean(ev_path or (argv[0] if argv else ""), MAX_EXE),
            _clean(cmdline, MAX_CMDLINE),
            p.info.container_image,
        )

    def handle(tid: int, ts: int, raw: str, args: str, r: str, err: str | None) -> None:
        p = threads.get(tid)
        if p is None:
            p = adopt(tid)
        if p.closed:
            st.dropped_after_exit += 1
            return
        name = names.get(raw)
        if name is None:
            name = canonical(raw)
            if len(names) < _NAME_CACHE_MAX:
                names[raw] = name
        if r == "?":
            res = 0
        elif r[0] != "0" or len(r) == 1:
            res = int(r)
            if res == -1 and err:
                res = -_ERRNO.get(err, 1)
        else:
            # 0x... addresses, and octal modes such as umask's "022".
            res = int(r, 16) if r[1] == "x" else int(r, 8)
        arg = ""
        end = 0
        if name in PATH_SYSCALLS:
            if name in _SOCKET_CALLS:
                arg = _socket_addr(args)
            else:
                arg, end = _first_path(args, p.cwd)
        if name in _SPECIAL_NAMES:
            if name == "clone":
                if res > 0:
                    on_clone(p, tid, raw, args, res)
                else:
                    pending_clones.pop(tid, None)
            elif name == "execve":
                if res == 0:
                    on_exec(p, args, arg, end)
            elif res == 0 and arg.startswith("/"):
                p.cwd = arg
            elif raw == "fchdir" and res == 0:
                p.cwd = None
        buf = p.buf
        buf.append(Syscall(ts, tid, name, res, arg))
        st.syscalls += 1
        if raw == "exit_group" and tid == p.pid:
            p.closed = True
            st.exits += 1
            flush(p)
            procs.pop(p.pid, None)
        elif len(buf) >= BATCH_MAX_EVENTS:
            flush(p)

    def on_exit(tid: int, ts: int, body: str) -> bool:
        m = _EXITED_RE.fullmatch(body)
        if m is None:
            return body.startswith("+++ superseded by execve")
        pending.pop(tid, None)
        p = threads.pop(tid, None)
        if p is None or tid != p.pid:
            return True
        if not p.closed:
            code = int(m.group(1)) if m.group(1) else -_SIGNUM.get(m.group(2), 1)
            p.buf.append(Syscall(ts, tid, "exit", code, ""))
            st.syscalls += 1
            st.exits += 1
            p.closed = True
        flush(p)
        procs.pop(p.pid, None)
        return True

    for line in lines:
        if line is TICK:
            for p in procs.values():
                flush(p)
            yield from out
            out.clear()
            continue
        if type(line) is CpuSample:
            # A reading of a thread's CPU time: it joins its process's batch
            # when the process is one the trace knows and has not ended.
            p = threads.get(line.tid) or procs.get(line.pid)
            if p is not None and p.pid == line.pid and not p.closed:
                p.buf.append(Syscall(line.ts_ns, line.tid, CPU_EVENT, line.cpu_ns, ""))
                st.cpu_samples += 1
                if len(p.buf) >= BATCH_MAX_EVENTS:
                    flush(p)
            continue
        st.lines += 1
        s = line.rstrip("\r\n")  # type: ignore[union-attr]
        try:
            if len(s) > MAX_LINE_CHARS:
                raise ParseError("oversized", f"{len(s)} chars", s[:MAX_RAW])
            if s.endswith(" <unfinished ...>"):
                m = _UNFINISHED_RE.fullmatch(s)
                if m is not None:
                    tid = int(m.group(1))
                    if tid not in threads:
                        adopt(tid)
                    raw = m.group(4)
                    if raw is not None:
                        head = m.group(5)
                        pending[tid] = (raw, _ts_ns(m.group(2), m.group(3)), head)
                        if raw in _CLONE_RAW:
                            pending_clones[tid] = "CLONE_THREAD" in head
                        elif raw in ("fork", "vfork"):
                            pending_clones[tid] = False
                    continue
            m = _CALL_RE.fullmatch(s)
            if m is not None:
                tid_s, sec, frac, raw, args, r, err = m.groups()
                if len(frac) == 6:
                    ts = int(sec) * 1_000_000_000 + int(frac) * 1000
                else:
                    ts = _ts_ns(sec, frac)
                handle(int(tid_s), ts, raw, args, r, err)
            else:
                m = _RESUMED_RE.fullmatch(s)
                if m is not None:
                    tid = int(m.group(1))
                    raw = m.group(4)
                    entry = pending.pop(tid, None)
                    if entry is not None:
                        ts, args = entry[1], entry[2] + m.group(5)
                    else:
                        ts, args = _ts_ns(m.group(2), m.group(3)), m.group(5)
                    handle(tid, ts, raw, args, m.group(6), m.group(7))
                else:
                    m = _HEAD_RE.fullmatch(s)
                    body = m.group(4) if m is not None else ""
                    if m is not None and body.startswith("---"):
                        pass
                    elif m is not None and body.startswith("+++"):
                        if not on_exit(
                            int(m.group(1)), _ts_ns(m.group(2), m.group(3)), body
                        ):
                            raise ParseError("bad_exit_line", "", s[:MAX_RAW])
                    elif not s.strip():
                        pass
                    else:
                        raise ParseError("not_trace_line", "", s[:MAX_RAW])
        except ParseError as exc:
            st.count_bad(exc.reason)
            out.append(exc)
        except ValueError as exc:
            st.count_bad("bad_field")
            out.append(ParseError("bad_field", str(exc)[:200], s[:MAX_RAW]))
        if out:
            yield from out
            out.clear()

    for p in list(procs.values()):
        flush(p)
    yield from out
    log.debug(
        "trace_parsed",
        lines=st.lines,
        syscalls=st.syscalls,
        batches=st.batches,
        bad=st.bad,
        exits=st.exits,
    )


def iter_trace_file(path: Path) -> Iterator[str]:
    """Lines of a trace file, decoded with replacement and split on ``\\n`` only."""
    with open(path, encoding="utf-8", errors="replace", newline="\n") as fh:
        yield from fh


def parse_trace_file(path: Path, **kwargs) -> Iterator[EventBatch | InputError]:
    """``parse_trace`` over a trace file; keyword arguments are passed on.

    The CPU readings recorded beside it (``producers.cputime.samples_path``),
    when there are any, are put among its lines in time order.
    """
    lines: Iterable = iter_trace_file(path)
    cpu = samples_path(path)
    if cpu.is_file():
        lines = merge_samples(lines, read_samples(cpu))
    return parse_trace(lines, **kwargs)


def _with_readings(lines: Iterable[str | Tick], readings: collections.deque
                   ) -> Iterator[str | Tick | CpuSample]:
    """Followed trace lines with the CPU readings taken so far put before ticks.

    Readings arrive from the sampler thread and are held until the trace's
    lines have passed their time (``producers.cputime.release``), so the
    syscalls made before a reading are parsed before it, as when a finished
    recording is merged; a held reading goes out before the next tick after
    that (or at the end), and joins the batches that tick publishes.
    """
    held: list = []
    latest = 0
    for line in lines:
        if line is TICK:
            while readings:
                held.extend(readings.popleft())
            if held:
                ready, held = release(held, latest, time.time_ns())
                yield from ready
        elif held or readings:
            ts = stamp_ns(line)  # type: ignore[arg-type]
            if ts is not None and ts > latest:
                latest = ts
        yield line
    while readings:
        held.extend(readings.popleft())
    yield from held


def _which(prog: str) -> str:
    exe = shutil.which(prog)
    if exe is None:
        raise SourceError(f"{prog} is not installed on this host")
    return exe


def strace_version() -> str:
    """The first line of ``strace -V`` (recorded with every corpus)."""
    done = subprocess.run(
        [_which("strace"), "-V"], capture_output=True, text=True, check=False
    )
    return done.stdout.splitlines()[0].strip() if done.stdout else "unknown"


def record(
    argv: list[str],
    out_path: Path,
    *,
    timeout_s: float | None = None,
    netns: bool = False,
    argv0: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdin_path: Path | None = None,
    stdout_path: Path | None = None,
    cpu_sink: Callable[[list[CpuSample]], None] | None = None,
) -> int:
    """Run a command under strace, writing the trace to ``out_path``.

    The command is run as ``[timeout -s INT -k 5 T] strace ... -- [unshare -n]
    [bash -c 'exec -a "$0" "$@"' ARGV0] ARGV``. Every string is passed as its own
    argv element, never pasted into shell text.

    Args:
        argv: the command and its arguments.
        out_path: where strace writes the trace.
        timeout_s: after this many seconds the command's process group gets
            SIGINT, and SIGKILL ``KILL_GRACE_S`` later.
        netns: run in a fresh network namespace (no network at all).
        argv0: show this argv[0] instead of ``argv[0]`` (the file run is still
            ``argv[0]``); the bash that sets it is traced too.
        env: environment of the command; this process's when None.
        cwd: working directory of the command.
        stdin_path: file for the command's standard input; /dev/null when None.
        stdout_path: file for its standard output; /dev/null when None.
        cpu_sink: receives the CPU time of every thread below strace about once
            a second while the command runs (``producers.cputime``).

    Returns:
        The command's exit code (124 when the timeout fired, 128+N when killed by
        signal N).

    Raises:
        SourceError: strace, timeout, unshare or bash is missing, or strace wrote
            no trace (ptrace not permitted, for example).
        ValueError: ``argv`` is empty.
    """
    if not argv:
        raise ValueError("nothing to record")
    out_path = Path(out_path).absolute()
    inner = list(argv)
    if argv0 is not None:
        inner = [_which("bash"), "-c", 'exec -a "$0" "$@"', argv0, *inner]
    if netns:
        inner = [_which("unshare"), "-n", *inner]
    cmd = [_which("strace"), *STRACE_OPTIONS, "-o", str(out_path), "--", *inner]
    if timeout_s is not None:
        # timeout signals its whole process group: strace blocks fatal signals
        # when run as -o FILE PROG, so the traced command gets the SIGINT.
        cmd = [
            _which("timeout"),
            "-s",
            "INT",
            "-k",
            f"{KILL_GRACE_S:g}",
            f"{timeout_s:g}",
            *cmd,
        ]
    if out_path.exists():
        out_path.unlink()

    t0 = time.monotonic()
    with (
        open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin,
        open(stdout_path, "wb") if stdout_path else open(os.devnull, "wb") as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        limit_s = None if timeout_s is None else timeout_s + KILL_GRACE_S + 10.0
        sampler = (TreeSampler(proc.pid, cpu_sink, trace=out_path)
                   if cpu_sink is not None else None)
        try:
            if sampler is not None:
                sampler.__enter__()
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            log.warning("trace_record_killed", pid=proc.pid, limit_s=limit_s)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
        finally:
            if sampler is not None:
                sampler.__exit__()
        stderr.seek(0)
        err_tail = stderr.read()[-2000:].decode("utf-8", "replace")
    duration_s = time.monotonic() - t0

    if not out_path.exists() or out_path.stat().st_size == 0:
        raise SourceError(f"strace wrote no trace (exit {rc}): {err_tail.strip()}")
    if rc < 0:
        rc = 128 - rc
    log.debug(
        "trace_recorded",
        prog=clean_cmdline(argv[0], 200),
        exit_code=rc,
        duration_s=round(duration_s, 3),
        trace_bytes=out_path.stat().st_size,
    )
    if rc != 0:
        log.debug("trace_command_failed", exit_code=rc,
                  stderr_tail=clean_cmdline(err_tail[-500:], 500))
    return rc


def trace_command(
    argv: list[str],
    *,
    host: str,
    out_dir: Path,
    container_id: str = "host",
    timeout_s: float | None = None,
    netns: bool = False,
    argv0: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stats: TraceStats | None = None,
    on_error: Callable[[InputError], None] | None = None,
    flush_every_s: float | None = FLUSH_EVERY_S,
) -> Iterator[EventBatch]:
    """Record a command under strace and yield its event batches as it runs.

    strace writes the trace to ``out_dir`` as
    ``trace-<time>-<pid>-<random>.strace``, mode 0600 once recorded (the
    file stays); the lines are parsed while strace writes them, and open
    batches are cut every ``flush_every_s`` seconds, so a long-running command
    (a miner) is published while it runs, not when it ends. Lines that cannot
    be parsed go to ``on_error`` (the collector dead-letters them) or are
    logged as ``trace_line_unparsed`` when it is None.

    Args:
        argv: the command and its arguments.
        host: host name for the batches.
        out_dir: folder for the trace file.
        container_id: container id for the batches.
        timeout_s, netns, argv0, env, cwd: as in ``record``.
        stats: filled with the parse counters and ``exit_code``.
        on_error: receives each unreadable line as an ``InputError``.
        flush_every_s: seconds between cuts of the open batches while the
            command runs; None cuts only where ``parse_trace_file`` would.

    Yields:
        Event batches, in trace order per process.

    Raises:
        SourceError: as ``record``, once the batches read before it are out.
    """
    st = stats if stats is not None else TraceStats()
    out_dir = Path(out_dir)
    # Traces hold raw argv and read/write buffers: a folder made here is
    # owner-only, the file is made owner-only once strace is done, and each run
    # gets its own name (two commands in one second used to share a file).
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = out_dir / (f"trace-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-"
                      f"{secrets.token_hex(4)}.strace")
    failure: list[BaseException] = []
    readings: collections.deque[list[CpuSample]] = collections.deque()

    def run() -> None:
        try:
            st.exit_code = record(argv, path, timeout_s=timeout_s, netns=netns,
                                  argv0=argv0, env=env, cwd=cwd,
                                  cpu_sink=readings.append)
        except BaseException as exc:  # noqa: BLE001 - raised by the reader below
            failure.append(exc)

    # The recording runs in a thread; this generator follows the trace file.
    recorder = threading.Thread(target=run, name="systerns-trace-record")
    recorder.start()
    root_cwd = str(Path(cwd).absolute()) if cwd is not None else os.getcwd()
    lines = _with_readings(
        follow_lines(path, lambda: not recorder.is_alive(), every_s=flush_every_s),
        readings)
    try:
        for item in parse_trace(lines, host=host, container_id=container_id,
                                cwd=root_cwd, stats=st):
            if isinstance(item, InputError):
                if on_error is not None:
                    on_error(item)
                else:
                    log.warning("trace_line_unparsed", reason=item.reason,
                                raw=clean_cmdline(str(item.raw), 200))
                continue
            yield item
    finally:
        # A reader that stops early still waits for the command, as before.
        recorder.join()
        if path.exists():
            path.chmod(0o600)
    if failure:
        raise failure[0]
    log.info(
        "trace_command_done",
        path=str(path),
        exit_code=st.exit_code,
        lines=st.lines,
        syscalls=st.syscalls,
        batches=st.batches,
        bad=st.bad,
    )
