"""CPU readings from /proc: read, parsed, folded into sessions, made features."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from systerns.core.events import CPU_EVENT, EventBatch, ProcessInfo, Syscall
from systerns.core.features import FEATURE_DIMS, OFFSETS, vectorize
from systerns.core.sessions import Sessionizer
from systerns.producers.cputime import (
    CpuSample,
    ProcWatch,
    descendants,
    file_sink,
    merge_samples,
    read_process,
    read_samples,
    samples_path,
)
from systerns.producers.sysdig import ReadStats, read_lines
from systerns.producers.ticker import TICK
from systerns.producers.trace import parse_trace, parse_trace_file, record
from systerns.serving.augment import add_cpu_blind_rows

CPU = OFFSETS["cpu_stats"]
S = 1_000_000_000


def _fake_proc(tmp_path: Path, pid: int, tasks: dict[int, str]) -> Path:
    for tid, stat in tasks.items():
        d = tmp_path / str(pid) / "task" / str(tid)
        d.mkdir(parents=True)
        (d / "stat").write_text(stat)
    (tmp_path / str(pid) / "stat").write_text(next(iter(tasks.values())))
    return tmp_path


def test_stat_lines_with_hostile_names_are_read_after_the_last_parenthesis(
    tmp_path: Path,
) -> None:
    rest = "R 1 0 0 0 0 0 0 0 0 0 250 50 0 0 20 0 1 0"
    proc = _fake_proc(tmp_path, 40, {
        40: f"40 (evil) 1 2 3 4 5 6 7 8 9 10 11 99 99) {rest}",
        41: "41 (no closing paren",
        42: f"42 (short) R 1 2",
        43: f"43 (x) R 1 0 0 0 0 0 0 0 0 0 abc 50 0",
    })
    got = read_process(40, ts_ns=5, proc=proc)
    tick = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)
    assert got == [CpuSample(5, 40, 40, 300 * tick)]
    assert read_process(999, proc=proc) == []


def test_own_threads_are_read_and_a_busy_thread_gains_cpu() -> None:
    before = {s.tid: s.cpu_ns for s in read_process(os.getpid())}
    assert os.getpid() in before
    x = 0
    for i in range(3_000_000):
        x += i * i
    after = {s.tid: s.cpu_ns for s in read_process(os.getpid())}
    assert after[os.getpid()] > before[os.getpid()]
    assert os.getpid() in descendants(os.getppid())


def test_readings_go_between_trace_lines_in_time_order() -> None:
    lines = ["7 100.000001 read(3, ...) = 1\n", TICK, "7 102.500000 write(1, ...) = 1\n"]
    samples = [CpuSample(101 * S, 7, 7, 1), CpuSample(103 * S, 7, 7, 2)]
    out = list(merge_samples(lines, samples))
    assert out == [lines[0], TICK, samples[0], lines[2], samples[1]]


def test_parser_adds_readings_of_traced_processes_only() -> None:
    lines = [
        '10 1.000000 execve("/bin/true", ["true"], 0x0 /* 0 vars */) = 0\n',
        CpuSample(1_500_000_000, 10, 10, 7_000_000),
        CpuSample(1_500_000_000, 99, 99, 1),  # not traced (strace itself)
        "10 2.000000 exit_group(0) = ?\n",
        CpuSample(2_500_000_000, 10, 10, 8_000_000),  # after the exit
    ]
    events = [e for b in parse_trace(lines, host="h") for e in b.events]
    cpu = [e for e in events if e.name == CPU_EVENT]
    assert cpu == [Syscall(1_500_000_000, 10, CPU_EVENT, 7_000_000, "")]


def _session(events: list[Syscall]) -> dict:
    info = ProcessInfo("h", "c", 5, 1, "p", "/bin/p", "p")
    store: dict = {}
    Sessionizer(store).ingest(EventBatch(info, tuple(events)))
    return store[info.key]


def test_readings_are_not_syscalls_and_the_first_one_is_a_baseline() -> None:
    base = [Syscall(i * S // 10, 5, "read", 10, "") for i in range(30)]
    plain = _session(base)
    reads = [
        Syscall(1 * S, 5, CPU_EVENT, 900 * S // 1000, ""),
        Syscall(1 * S, 6, CPU_EVENT, 100, ""),
        Syscall(3 * S, 5, CPU_EVENT, 1_100 * S // 1000, ""),
        Syscall(3 * S, 6, CPU_EVENT, 100 + 2 * S, ""),
        Syscall(2 * S, 6, CPU_EVENT, 5 * S, ""),  # back in time: ignored
    ]
    s = _session(base + reads)
    assert s["n_events"] == plain["n_events"] == 30
    assert s["counts"] == plain["counts"]
    # Thread 5 made syscalls between its readings, thread 6 none.
    assert s["cpu"] == {"5": [S, 900 * S // 1000, 3 * S, 1_100 * S // 1000, 0],
                        "6": [S, 100, 3 * S, 100 + 2 * S, 2 * S]}
    assert s["last_ts_ns"] == plain["last_ts_ns"] and s["cpu_ts_ns"] == 3 * S
    v, w = vectorize(s), vectorize(plain)
    assert np.array_equal(v[:CPU], w[:CPU])
    assert not w[CPU:].any()
    assert v[CPU] == 1.0
    # 2.2 s of CPU over 2 s of readings: 1.1 cores, busiest thread all the time.
    assert abs(v[CPU + 1] - 1.1 / 4) < 1e-6
    assert abs(v[CPU + 2] - 1.0) < 1e-6
    # Thread 6 made no syscall: its 2 s are 2/2.2 of the CPU.
    assert abs(v[CPU + 4] - 2 / 2.2) < 1e-6
    assert FEATURE_DIMS[3] == FEATURE_DIMS[2] + 6 == len(v)


def _record_and_judge(argv: list[str], trace: Path) -> list:
    """Record a real command with CPU readings; every judgement of its sessions."""
    with open(samples_path(trace), "w") as fh:
        assert record(argv, trace, cpu_sink=file_sink(fh)) == 0
    sz = Sessionizer({})
    judged = []
    for b in parse_trace_file(trace, host="h"):
        judged += sz.ingest(b)
    return judged + sz.flush()


def test_a_recorded_silent_busy_thread_shows_in_the_cpu_block(tmp_path: Path) -> None:
    # One thread computes for ~2.5 s without a syscall while the main thread
    # waits in join: the miner's shape, recorded for real.
    prog = ("import threading, time\n"
            "def spin():\n"
            "    end = time.monotonic() + 2.5\n"
            "    while time.monotonic() < end: pass\n"
            "t = threading.Thread(target=spin); t.start(); t.join()\n")
    trace = tmp_path / "busy.strace"
    judged = _record_and_judge([sys.executable, "-c", prog], trace)
    samples = read_samples(samples_path(trace))
    assert len({s.ts_ns for s in samples}) >= 2
    main = [j.session for j in judged if j.final and j.session["cpu"]
            and j.session["comm"].startswith("python")]
    assert main
    v = vectorize(main[-1])
    assert v[CPU] == 1.0
    assert v[CPU + 2] > 0.3  # the busy thread ran much of the time
    assert v[CPU + 4] > 0.5  # most CPU from threads without syscalls


def test_proc_watch_reads_seen_processes_and_forgets_gone_ones() -> None:
    me = ProcessInfo("h", "host", os.getpid(), os.getppid(), "py", "py", "py")
    gone = ProcessInfo("h", "host", 2**22 + 17, 1, "x", "x", "x")
    watch = ProcWatch(keep_s=10)
    watch.seen([me, gone], now_ns=S)
    got = watch.read(2 * S)
    assert {ev.tid for _, ev in got} >= {os.getpid()}
    assert all(info == me and ev.name == CPU_EVENT for info, ev in got)
    assert len(watch) == 1
    assert watch.read(20 * S) == [] and len(watch) == 0  # not seen for 18 s


def test_live_reader_adds_readings_to_batches_at_ticks(monkeypatch) -> None:
    import systerns.producers.cputime as cputime

    monkeypatch.setattr(cputime, "READING_HOLD_S", 0.0)  # no events to wait for
    me = ProcessInfo("h", "host", os.getpid(), os.getppid(), "py", "py", "py")
    watch = ProcWatch()
    watch.seen([me], now_ns=0)
    watch.keep_ns = 1 << 62
    stats = ReadStats()
    out = [b for b in read_lines([TICK], "h", stats, "sysdig-live", cpu=watch)
           if isinstance(b, EventBatch)]
    assert out and out[0].process == me
    assert {e.name for e in out[0].events} == {CPU_EVENT}
    assert stats.cpu_readings == len(out[0].events) >= 1


class _OneReading:
    """A ProcWatch stand-in: one reading of pid 5 at a fixed time."""

    def __init__(self, info: ProcessInfo, ts: int) -> None:
        self.info, self.ts, self.done = info, ts, False

    def seen(self, infos, now_ns: int) -> None:
        pass

    def read(self, now_ns: int) -> list:
        if self.done:
            return []
        self.done = True
        return [(self.info, Syscall(self.ts, 5, CPU_EVENT, 42, ""))]


def test_live_readings_wait_until_the_events_before_them_are_read() -> None:
    import orjson

    ts = 10**19 // 2  # later than the clock: only events can release it
    info = ProcessInfo("h", "host", 5, 1, "p", "/bin/p", "p")

    def line(t: int) -> bytes:
        return orjson.dumps({"evt.num": 1, "evt.rawtime": t, "evt.type": "read",
                             "evt.dir": "<", "evt.rawres": 1, "proc.pid": 5,
                             "proc.ppid": 1, "thread.tid": 5, "proc.name": "p",
                             "proc.exe": "/bin/p", "proc.cmdline": "p"})
    lines = [line(ts - 5), TICK, line(ts - 1), TICK, line(ts + 1), TICK]
    batches = [b for b in read_lines(lines, "h", ReadStats(), "sysdig-live",
                                     cpu=_OneReading(info, ts))
               if isinstance(b, EventBatch)]
    order = [e.ts_ns for b in batches for e in b.events]
    # Held over two ticks; released at the tick after the event stamped later.
    assert order == [ts - 5, ts - 1, ts + 1, ts]


def test_cpu_blind_copies_zero_the_block_and_skip_cpu_only_rows() -> None:
    x = np.zeros((3, FEATURE_DIMS[3]), np.float32)
    x[:, 0] = 0.5
    x[:2, CPU:CPU + 3] = 1.0
    labels = np.array([0, 1, 2])
    mal = np.array([0.0, 1.0, 0.0], np.float32)
    groups = np.array(["a", "b", "c"], object)
    eligible = np.array([True, False, True])
    fx, fl, fm, fg = add_cpu_blind_rows(x, labels, mal, groups, eligible, seed=1)
    # Row 0 is copied; row 1 is cpu-only; row 2 has no readings to hide.
    assert len(fx) == 4 and list(fg) == ["a", "b", "c", "a"]
    assert fl[3] == 0 and fm[3] == 0.0
    assert fx[3, 0] == 0.5 and not fx[3, CPU:].any()


def test_alerts_carry_cpu_evidence_as_tags_when_there_are_readings() -> None:
    from systerns.core.verdicts import ModelAnswer, build_alert

    answer = ModelAnswer("labminer", 0.9, 0.99, 6)
    base = [Syscall(i * S // 10, 5, "read", 10, "") for i in range(30)]
    plain = build_alert(_session(base), answer, "crypto_mining", "running",
                        model_name="systerns")
    assert plain["tags"] == ["source:sysdig"]
    reads = [Syscall(1 * S, 6, CPU_EVENT, 0, ""), Syscall(3 * S, 6, CPU_EVENT, 2 * S, "")]
    tagged = build_alert(_session(base + reads), answer, "crypto_mining", "running",
                         model_name="systerns")
    assert tagged["tags"] == ["source:sysdig", "cpu_cores:1.00", "cpu_seconds:2.0",
                              "cpu_busy_threads:1", "cpu_silent_share:1.00"]


def test_readings_never_open_a_session_nor_cut_one_of_another_image() -> None:
    from systerns.core.sessions import SessionPolicy

    info = ProcessInfo("h", "c", 5, 1, "p", "/bin/p", "p")
    other = ProcessInfo("h", "c", 5, 1, "q", "/bin/q", "q")
    store: dict = {}
    sz = Sessionizer(store)
    # Readings alone (before any syscall, or after the exit) open nothing.
    assert sz.ingest(EventBatch(info, (Syscall(S, 5, CPU_EVENT, 1, ""),))) == []
    assert store == {}
    sz.ingest(EventBatch(info, tuple(Syscall(2 * S + i, 5, "read", 1, "")
                                     for i in range(25))))
    # A session opened after a reading starts at its first syscall.
    assert store[info.key]["first_ts_ns"] == 2 * S
    # Readings named after another image (the pid was reused): dropped.
    assert sz.ingest(EventBatch(other, (Syscall(3 * S, 5, CPU_EVENT, 1, ""),))) == []
    assert store[info.key]["comm"] == "p" and store[info.key]["cpu"] == {}
    closed = sz.ingest(EventBatch(info, (Syscall(4 * S, 5, "exit", 0, ""),
                                         Syscall(5 * S, 5, CPU_EVENT, 9, ""))))
    assert [j.trigger for j in closed] == ["exit"] and store == {}

    # Eviction counts readings as activity: the quiet miner stays.
    sz = Sessionizer({}, SessionPolicy(max_sessions=2))
    miner = ProcessInfo("h", "c", 1, 0, "m", "/m", "m")
    busy = ProcessInfo("h", "c", 2, 0, "b", "/b", "b")
    sz.ingest(EventBatch(miner, tuple(Syscall(i, 1, "read", 1, "") for i in range(25))))
    sz.ingest(EventBatch(busy, (Syscall(5 * S, 2, "read", 1, ""),)))
    sz.ingest(EventBatch(miner, (Syscall(9 * S, 1, CPU_EVENT, 1, ""),)))
    evicted = sz.ingest(EventBatch(ProcessInfo("h", "c", 3, 0, "n", "/n", "n"),
                                   (Syscall(10 * S, 3, "read", 1, ""),)))
    assert miner.key in sz.store and busy.key not in sz.store
    assert [j.trigger for j in evicted] in ([], ["evicted"])


def test_batches_count_syscalls_without_readings() -> None:
    info = ProcessInfo("h", "c", 5, 1, "p", "/bin/p", "p")
    batch = EventBatch(info, (Syscall(1, 5, "read", 1, ""), Syscall(2, 5, CPU_EVENT, 7, ""),
                              Syscall(3, 5, "write", 1, "")))
    assert len(batch) == 3 and batch.syscall_count() == 2


def test_stamps_that_are_not_numbers_and_pid_cycles_do_not_break_readers(
    tmp_path: Path,
) -> None:
    lines = ["7 1e400 read(3) = 1\n", "7 nan write(1) = 1\n", "7 5.0 close(3) = 0\n"]
    out = list(merge_samples(lines, [CpuSample(4 * S, 7, 7, 1)]))
    assert out == [lines[0], lines[1], CpuSample(4 * S, 7, 7, 1), lines[2]]
    rest = "0 0 0 0 0 0 0 0 0 1 1 0 0 20 0 1 0"
    for pid, ppid in ((10, 20), (20, 10)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (x) S {ppid} {rest}")
    assert descendants(10, proc=tmp_path) == [10, 20]


def test_a_payload_that_left_the_tree_is_still_read(tmp_path: Path) -> None:
    # A dropper starts its payload in the background and exits at once, as
    # droppers do: the payload is reparented away from strace's tree, but the
    # trace names it, so its CPU is still read.
    payload = ("import time\n"
               "end = time.monotonic() + 2.5\n"
               "while time.monotonic() < end: pass\n")
    judged = _record_and_judge(
        ["/bin/sh", "-c", f'{sys.executable} -c "$0" & exit 0', payload],
        tmp_path / "dropper.strace")
    busy = [j.session for j in judged if j.final and j.session["cpu"]]
    assert busy, "no session of the payload has CPU readings"
    assert max(vectorize(s)[CPU + 2] for s in busy) > 0.3


def test_trace_follower_maps_thread_ids_to_their_group(tmp_path: Path) -> None:
    from systerns.producers.cputime import TraceFollower

    for tid, tgid in ((30, 30), (31, 30), (40, 40)):
        (tmp_path / "proc" / str(tid)).mkdir(parents=True)
        (tmp_path / "proc" / str(tid) / "status").write_text(
            f"Name:\tx\nTgid:\t{tgid}\nPid:\t{tid}\n")
    trace = tmp_path / "t.strace"
    trace.write_text("30 1.0 read(0) = 1\n31 1.1 futex(0x1) = 0\n99 1.2 wri")
    follow = TraceFollower(trace, proc=tmp_path / "proc")
    assert follow.poll() == {30}  # 99 is gone from /proc; the cut line waits
    with open(trace, "a") as fh:
        fh.write("te(1) = 1\n40 2.0 close(3) = 0\n")
    assert follow.poll() == {30, 40}
