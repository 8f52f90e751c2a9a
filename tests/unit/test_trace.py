"""Tests for the strace recorder and parser (producers/trace.py)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from systerns.core.errors import ParseError
from systerns.core.events import EventBatch
from systerns.core.sessions import Sessionizer
from systerns.producers.trace import (
    BATCH_MAX_EVENTS,
    MAX_CMDLINE,
    TraceStats,
    parse_trace,
    parse_trace_file,
    record,
    trace_command,
    unescape,
)

needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed"
)
T0 = "1700000000"


def _line(tid: int, usec: int, body: str) -> str:
    return f"{tid} {T0}.{usec:06d} {body}\n"


def _batches(items: list) -> list[EventBatch]:
    return [b for b in items if isinstance(b, EventBatch)]


def _record_parse(
    tmp_path: Path, argv: list[str], **kw
) -> tuple[int, list, TraceStats]:
    out = tmp_path / "t.strace"
    rc = record(argv, out, **kw)
    stats = TraceStats()
    items = list(
        parse_trace_file(out, host="h", cwd=str(kw.get("cwd") or tmp_path), stats=stats)
    )
    return rc, items, stats


# --- recorded with the real strace -------------------------------------------------


@needs_strace
def test_ls_root_is_one_process_that_execs_and_exits(tmp_path: Path) -> None:
    """`ls /` is a single process: execve opens its batch, an exit closes it."""
    rc, items, stats = _record_parse(tmp_path, ["ls", "/"])
    batches = _batches(items)
    events = [e for b in batches for e in b.events]

    assert rc == 0
    assert stats.bad == 0
    assert {b.process.pid for b in batches} == {batches[0].process.pid}
    assert batches[0].process.comm == "ls"
    assert batches[0].process.exe.endswith("/ls")
    assert batches[0].process.cmdline == "ls /"
    assert events[0].name == "execve" and events[0].res == 0
    assert [e.name for e in events].count("exit") == 1
    assert events[-1].name == "exit"
    assert "open" in {e.name for e in events}
    assert "openat" not in {e.name for e in events}
    assert any(e.name == "open" and e.arg == "/etc/ld.so.cache" for e in events)
    assert all(e.ts_ns > 1_600_000_000 * 10**9 for e in events)
    assert all(len(b) <= BATCH_MAX_EVENTS for b in batches)


@needs_strace
def test_pipeline_children_have_parent_and_new_identity(tmp_path: Path) -> None:
    """sh forks cat and wc: ppid is sh, comm changes at execve, each exits once."""
    rc, items, _ = _record_parse(tmp_path, ["sh", "-c", "cat /etc/hostname | wc -c"])
    batches = _batches(items)
    sh_pid = next(b.process.pid for b in batches if b.process.ppid == 0)
    by_comm: dict[str, set[int]] = {}
    for b in batches:
        by_comm.setdefault(b.process.comm, set()).add(b.process.pid)

    assert rc == 0
    assert set(by_comm) == {"sh", "cat", "wc"}
    for comm in ("cat", "wc"):
        (pid,) = by_comm[comm]
        assert pid != sh_pid
        assert all(b.process.ppid == sh_pid for b in batches if b.process.pid == pid)
        first = next(b for b in batches if b.process.comm == comm)
        assert first.events[0].name == "execve"
        exits = [
            e
            for b in batches
            if b.process.pid == pid
            for e in b.events
            if e.name == "exit" and e.tid == pid
        ]
        assert len(exits) == 1
    cat_batch = next(b for b in batches if b.process.comm == "cat")
    assert cat_batch.process.cmdline == "cat /etc/hostname"
    assert any(e.arg == "/etc/hostname" for e in cat_batch.events)


@needs_strace
def test_pipeline_feeds_the_sessionizer(tmp_path: Path) -> None:
    """The batches make one session per image (sh, cat, wc) closed by exit/exec."""
    _, items, _ = _record_parse(tmp_path, ["sh", "-c", "cat /etc/hostname | wc -c"])
    sz = Sessionizer({})
    judged = []
    for b in _batches(items):
        judged += sz.ingest(b)
    judged += sz.flush()
    final = {(j.session["comm"], j.trigger) for j in judged if j.final}

    assert ("cat", "exit") in final
    assert ("wc", "exit") in final
    assert ("sh", "exit") in final
    assert sz.store == {}


@needs_strace
def test_python_thread_folds_into_its_process(tmp_path: Path) -> None:
    """A thread's syscalls land in its thread group's batches, not a new process."""
    code = (
        "import threading\n"
        "t = threading.Thread(target=lambda: open('/etc/hostname').read())\n"
        "t.start(); t.join()\n"
    )
    rc, items, _ = _record_parse(tmp_path, [sys.executable, "-c", code])
    batches = _batches(items)
    pids = {b.process.pid for b in batches}
    (pid,) = pids
    tids = {e.tid for b in batches for e in b.events}
    thread_tids = tids - {pid}
    clone_res = [e.res for b in batches for e in b.events if e.name == "clone"]

    assert rc == 0
    assert len(thread_tids) >= 1
    assert set(clone_res) & thread_tids
    assert any(
        e.arg == "/etc/hostname" and e.tid in thread_tids
        for b in batches
        for e in b.events
    )


@needs_strace
def test_timeout_interrupts_with_sigint(tmp_path: Path) -> None:
    """A timed-out command gets SIGINT; its exit event carries -SIGINT."""
    t0 = time.monotonic()
    rc, items, _ = _record_parse(tmp_path, ["sleep", "30"], timeout_s=0.5)
    elapsed_s = time.monotonic() - t0
    exits = [e for b in _batches(items) for e in b.events if e.name == "exit"]

    assert rc == 124
    assert elapsed_s < 5
    assert exits and exits[-1].res == -2


@needs_strace
def test_netns_has_no_network(tmp_path: Path) -> None:
    """With netns=True the command sees only a loopback interface."""
    if not shutil.which("unshare"):
        pytest.skip("unshare missing")
    out = tmp_path / "dev.txt"
    rc = record(
        ["cat", "/proc/net/dev"], tmp_path / "t.strace", netns=True, stdout_path=out
    )
    names = {
        ln.split(":")[0].strip() for ln in out.read_text().splitlines() if ":" in ln
    }

    assert rc == 0
    assert names == {"lo"}


@needs_strace
def test_argv0_is_passed_as_data_not_shell(tmp_path: Path) -> None:
    """A hostile argv0 is shown to the program but never run by the shell."""
    hostile = "$(touch pwned1); `touch pwned2`; touch pwned3"
    rc, items, _ = _record_parse(tmp_path, ["true"], argv0=hostile, cwd=tmp_path)
    trace = (tmp_path / "t.strace").read_text()
    main = [b for b in _batches(items) if b.process.comm == "true"]

    assert rc == 0
    assert not list(tmp_path.glob("pwned*"))
    assert '["$(touch pwned1); `touch pwned2`; touch pwned3"]' in trace
    assert main and main[0].process.cmdline == "true"


@needs_strace
def test_trace_command_yields_batches_and_exit_code(tmp_path: Path) -> None:
    """The collector entry point records, parses and reports the exit code."""
    stats = TraceStats()
    batches = list(
        trace_command(["sh", "-c", "exit 3"], host="h", out_dir=tmp_path, stats=stats)
    )

    assert stats.exit_code == 3
    assert batches and all(isinstance(b, EventBatch) for b in batches)
    assert list(tmp_path.glob("trace-*.strace"))


# --- synthetic lines ---------------------------------------------------------------


def test_garbage_lines_become_parse_errors_and_parsing_goes_on() -> None:
    """Junk yields ParseError objects (not raised); good lines still parse."""
    lines = [
        "this is not strace\n",
        _line(10, 1, 'execve("/bin/x", ["x"], 0x0 /* 0 vars */) = 0'),
        "12 abc read(3) = 1\n",
        _line(10, 2, 'Read(3, "", 1) = 0'),
        _line(10, 3, "a" * 60 + "(1) = 0"),
        _line(10, 4, "+++ something odd +++"),
        _line(10, 5, 'write(1, "ok", 2) = 2'),
        _line(10, 6, "umask(000)      = 022"),
        _line(10, 8, 'write(1, "' + "x" * 2_000_000 + '", 1) = 1'),
        _line(10, 7, "mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, 3, 0) = 0x7f0000001000"),
        "\n",
    ]
    stats = TraceStats()
    items = list(parse_trace(lines, host="h", stats=stats))
    errors = [i for i in items if isinstance(i, ParseError)]
    events = [e for b in _batches(items) for e in b.events]

    assert len(errors) == 6
    assert stats.bad == 6
    assert set(stats.reasons) == {
        "not_trace_line",
        "bad_field",
        "bad_exit_line",
        "oversized",
    }
    assert [e.name for e in events] == ["execve", "write", "umask", "mmap"]
    assert [e.res for e in events[2:]] == [0o22, 0x7F0000001000]
    assert errors[0].raw == "this is not strace"


def test_unfinished_and_resumed_merge_and_threads_are_adopted() -> None:
    """Halves merge with the entry time; an early thread joins its parent."""
    lines = [
        _line(100, 1, 'execve("/usr/bin/foo", ["foo", "a"], 0x1 /* 1 vars */) = 0'),
        _line(
            100,
            2,
            "clone(child_stack=NULL, flags=CLONE_VM|CLONE_THREAD|"
            "CLONE_SIGHAND <unfinished ...>",
        ),
        _line(101, 3, "set_robust_list(0x1, 24) = 0"),
        _line(100, 4, "<... clone resumed>, child_tidptr=0x1) = 101"),
        _line(101, 5, 'openat(AT_FDCWD, "rel/x", O_RDONLY <unfinished ...>'),
        _line(100, 6, 'read(3, "a) = 9", 10) = 6'),
        _line(101, 7, "<... openat resumed>) = -1 ENOENT (No such file or directory)"),
        _line(101, 8, "exit(0) = ?"),
        _line(101, 9, "+++ exited with 0 +++"),
        _line(100, 10, "--- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---"),
        _line(100, 11, "exit_group(3) = ?"),
        _line(100, 12, "+++ exited with 3 +++"),
    ]
    items = list(parse_trace(lines, host="h", cwd="/work"))
    batches = _batches(items)
    events = [e for b in batches for e in b.events]
    opened = next(e for e in events if e.name == "open")

    assert len(items) == len(batches)
    assert {b.process.pid for b in batches} == {100}
    assert [e.name for e in events] == [
        "execve",
        "set_robust_list",
        "clone",
        "read",
        "open",
        "exit",
        "exit",
    ]
    assert opened.tid == 101
    assert opened.ts_ns == 1_700_000_000_000_005_000
    assert opened.res == -2
    assert opened.arg == "/work/rel/x"
    assert next(e for e in events if e.name == "read").res == 6
    assert [e.tid for e in events if e.name == "exit"] == [101, 100]
    assert batches[0].process.cmdline == "foo a"


def test_fork_exec_and_signal_death() -> None:
    """A fork is a process with ppid; execve renames it; a kill adds exit -SIG."""
    lines = [
        _line(200, 1, 'execve("/bin/sh", ["sh"], 0x1 /* 1 vars */) = 0'),
        _line(
            200,
            2,
            "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD, "
            "child_tidptr=0x1) = 201",
        ),
        _line(
            201, 3, 'execve("./evil", ["[kworker/0:1]", "-x"], 0x1 /* 1 vars */) = 0'
        ),
        _line(
            201,
            4,
            "connect(3, {sa_family=AF_INET, sin_port=htons(4444), "
            'sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED '
            "(Connection refused)",
        ),
        _line(
            201, 5, 'connect(4, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = 0'
        ),
        _line(
            201,
            6,
            'sendto(5, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(53), '
            'sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", '
            "&sin6_addr), sin6_scope_id=0}, 28) = 1",
        ),
        _line(201, 7, "+++ killed by SIGKILL +++"),
        _line(200, 8, "vfork() = 202"),
        _line(202, 9, "getpid() = 202"),
    ]
    batches = _batches(list(parse_trace(lines, host="h", cwd="/srv")))
    child = [b for b in batches if b.process.pid == 201]
    events = [e for b in child for e in b.events]
    after_exec = [b for b in child if b.process.comm == "evil"]

    assert all(b.process.ppid == 200 for b in child)
    assert after_exec and after_exec[0].process.exe == "/srv/evil"
    assert after_exec[0].process.cmdline == "evil -x"
    assert [e.arg for e in events if e.name in ("connect", "send")] == [
        "127.0.0.1:4444",
        "/run/x.sock",
        "::1:53",
    ]
    assert events[-1].name == "exit" and events[-1].res == -9
    assert next(e for e in events if e.name == "connect").res == -111
    assert any(b.process.pid == 202 and b.process.ppid == 200 for b in batches)


def test_batches_are_cut_at_the_size_limit() -> None:
    """One process making 600 calls gives batches of 256, 256 and the rest."""
    lines = [_line(300, 1, 'execve("/bin/r", ["r"], 0x1 /* 1 vars */) = 0')]
    lines += [_line(300, 2 + i, 'read(0, "", 1) = 0') for i in range(599)]
    sizes = [len(b) for b in _batches(list(parse_trace(lines, host="h")))]

    assert sizes == [256, 256, 88]


def test_hostile_execve_strings_are_decoded_cleaned_and_capped() -> None:
    r"""Escapes decode, invalid UTF-8 becomes U+FFFD, control chars become ?."""
    long_arg = "A" * 3000
    lines = [
        _line(
            400,
            1,
            'execve("/tmp/\\303\\251vil\\nname-with-a-very-long-tail", '
            f'["x", "a\\nb\\377", "{long_arg}", "{long_arg}"], 0x1 /* 0 vars */) = 0',
        )
    ]
    (batch,) = _batches(list(parse_trace(lines, host="h")))
    p = batch.process

    assert p.comm == "évil?name-with-"
    assert len(p.comm) == 15
    assert "\ufffd" in p.cmdline
    assert "\n" not in p.cmdline and "\n" not in p.exe
    assert len(p.cmdline) <= MAX_CMDLINE
    assert unescape(r"\x41\101\t\"") == 'AA\t"'


def test_exit_group_by_a_thread_gets_the_leader_exit_from_the_exit_line() -> None:
    """When a non-leader thread calls exit_group, the leader's +++ line closes."""
    lines = [
        _line(500, 1, 'execve("/bin/m", ["m"], 0x1 /* 1 vars */) = 0'),
        _line(500, 2, "clone3({flags=CLONE_VM|CLONE_THREAD, exit_signal=0}, 88) = 501"),
        _line(501, 3, "exit_group(0) = ?"),
        _line(501, 4, "+++ exited with 0 +++"),
        _line(500, 5, "+++ exited with 0 +++"),
    ]
    stats = TraceStats()
    events = [
        e
        for b in _batches(list(parse_trace(lines, host="h", stats=stats)))
        for e in b.events
    ]
    exits = [(e.tid, e.res) for e in events if e.name == "exit"]

    assert exits == [(501, 0), (500, 0)]
    assert events[-1].name == "exit"
