"""Sessionizing: identity per (host, container, pid, exec), triggers, bounds."""

from __future__ import annotations

from systerns.core.events import EventBatch, ProcessInfo, Syscall
from systerns.core.sessions import SessionPolicy, Sessionizer

S = 1_000_000_000


def proc(pid=100, comm="ls", exe="/bin/ls", host="h1", container="c1"):
    return ProcessInfo(host, container, pid, 1, comm, exe, comm)


def calls(n, t0=0, tid=100, name="read", step_ns=1_000_000):
    return tuple(Syscall(t0 + i * step_ns, tid, name, 0, "") for i in range(n))


def test_exit_closes_the_session_with_all_its_events():
    sz = Sessionizer({}, SessionPolicy(min_events=5))
    out = sz.ingest(EventBatch(proc(), calls(30)))
    assert out == [] or all(not j.final for j in out)
    out = sz.ingest(EventBatch(proc(), (Syscall(40 * 1_000_000, 100, "exit"),)))
    finals = [j for j in out if j.final]
    assert len(finals) == 1
    assert finals[0].trigger == "exit"
    assert finals[0].session["n_events"] == 31
    assert sz.store == {}


def test_reused_pid_with_another_program_starts_a_new_session():
    sz = Sessionizer({}, SessionPolicy(min_events=5))
    sz.ingest(EventBatch(proc(comm="ls", exe="/bin/ls"), calls(10)))
    out = sz.ingest(EventBatch(proc(comm="cat", exe="/bin/cat"), calls(10, t0=S)))
    assert [j.session["comm"] for j in out if j.final] == ["ls"]
    assert sz.store["h1/c1/100"]["comm"] == "cat"
    assert sz.store["h1/c1/100"]["n_events"] == 10


def test_execve_splits_the_image_and_sessions_get_distinct_ids():
    sz = Sessionizer({}, SessionPolicy(min_events=5))
    sz.ingest(EventBatch(proc(comm="bash", exe="/bin/bash"), calls(10)))
    batch = EventBatch(proc(comm="ls"), (Syscall(S, 100, "execve", 0, "/bin/ls"),)
                       + calls(10, t0=S + 1))
    out = sz.ingest(batch)
    closed = [j for j in out if j.final]
    assert [j.trigger for j in closed] == ["exec"]
    assert closed[0].session["comm"] == "bash"
    assert closed[0].session["session_id"] != sz.store["h1/c1/100"]["session_id"]


def test_a_failed_execve_does_not_split():
    sz = Sessionizer({}, SessionPolicy(min_events=5))
    sz.ingest(EventBatch(proc(), calls(10)))
    out = sz.ingest(EventBatch(proc(), (Syscall(S, 100, "execve", -2, "/nope"),)))
    assert not [j for j in out if j.final]


def test_same_pid_in_two_containers_are_two_sessions():
    sz = Sessionizer({}, SessionPolicy(min_events=5))
    sz.ingest(EventBatch(proc(container="a"), calls(10)))
    sz.ingest(EventBatch(proc(container="b"), calls(10)))
    assert set(sz.store) == {"h1/a/100", "h1/b/100"}


def test_running_session_is_judged_periodically_without_exiting():
    sz = Sessionizer({}, SessionPolicy(min_events=5, first_judge_s=1, judge_every_s=2))
    running = []
    for second in range(10):
        out = sz.ingest(EventBatch(proc(comm="miner"), calls(20, t0=second * S)))
        running += [j for j in out if j.trigger == "running"]
    assert 3 <= len(running) <= 6
    assert all(not j.final for j in running)
    assert running[-1].session["n_events"] > running[0].session["n_events"]


def test_idle_sessions_are_swept_on_event_time():
    sz = Sessionizer({}, SessionPolicy(min_events=5, idle_s=10))
    sz.ingest(EventBatch(proc(pid=1), calls(10)))
    sz.ingest(EventBatch(proc(pid=2), calls(10, t0=30 * S)))
    swept = sz.sweep()
    assert [j.session["pid"] for j in swept] == [1]
    assert swept[0].trigger == "idle"
    assert list(sz.store) == ["h1/c1/2"]


def test_wall_clock_sweep_respects_partitions():
    sz = Sessionizer({}, SessionPolicy(min_events=5, idle_s=1))
    sz.ingest(EventBatch(proc(pid=1), calls(10)), partition=0, wall_ns=0)
    sz.ingest(EventBatch(proc(pid=2), calls(10)), partition=1, wall_ns=0)
    swept = sz.sweep(5 * S, wall=True, partition=1)
    assert [j.session["pid"] for j in swept] == [2]
    assert list(sz.store) == ["h1/c1/1"]


def test_store_cap_evicts_the_oldest_and_still_judges_it():
    sz = Sessionizer({}, SessionPolicy(min_events=5, max_sessions=2))
    sz.ingest(EventBatch(proc(pid=1), calls(10, t0=0)))
    sz.ingest(EventBatch(proc(pid=2), calls(10, t0=S)))
    out = sz.ingest(EventBatch(proc(pid=3), calls(10, t0=2 * S)))
    evicted = [j for j in out if j.trigger == "evicted"]
    assert [j.session["pid"] for j in evicted] == [1]
    assert evicted[0].session["evicted"] is True
    assert len(sz.store) == 2


def test_tiny_sessions_are_not_judged():
    sz = Sessionizer({}, SessionPolicy(min_events=20))
    sz.ingest(EventBatch(proc(), calls(3)))
    assert sz.flush() == []


def test_paths_only_count_for_path_syscalls():
    sz = Sessionizer({}, SessionPolicy(min_events=1))
    evs = (Syscall(1, 100, "open", 3, "/etc/passwd"),
           Syscall(2, 100, "read", 10, "/etc/passwd"),
           Syscall(3, 100, "connect", 0, "127.0.0.1:40000->127.0.0.1:80"))
    sz.ingest(EventBatch(proc(), evs))
    state = sz.store["h1/c1/100"]
    assert state["paths"] == {"etc_auth": 1, "socket_inet": 1}


def test_running_snapshots_do_not_change_after_they_are_taken():
    sz = Sessionizer({}, SessionPolicy(min_events=5, first_judge_s=0.001))
    out = sz.ingest(EventBatch(proc(), calls(10)))
    snap = [j for j in out if j.trigger == "running"][0].session
    before = (snap["n_events"], dict(snap["counts"]))
    sz.ingest(EventBatch(proc(), calls(50, t0=S, name="write")))
    assert (snap["n_events"], snap["counts"]) == before


def test_a_hole_in_the_stream_is_not_counted_as_a_gap():
    """Two captures of one host published one after the other leave a 400 s hole
    in each thread's calls: it is not time spent computing or waiting."""
    from systerns.core.sessions import MAX_OBSERVED_GAP_NS

    sz = Sessionizer({}, SessionPolicy(min_events=5))
    sz.ingest(EventBatch(proc(), calls(10, name="write", step_ns=S)))
    later = 9 * S + MAX_OBSERVED_GAP_NS + 400 * S
    out = sz.ingest(EventBatch(proc(), calls(10, t0=later, name="write", step_ns=S)))
    out += sz.flush()
    (final,) = [j for j in out if j.final]
    state = final.session
    assert state["n_events"] == 20
    assert sum(state["gaps"].values()) == 18  # 9 + 9 one-second gaps, not the hole
    assert state["gap_ns"]["c"] == 18 * S
    # A long gap that is still observed (a minute) counts in full.
    sz = Sessionizer({}, SessionPolicy(min_events=5))
    sz.ingest(EventBatch(proc(), calls(10, name="write", step_ns=S)))
    out = sz.ingest(EventBatch(proc(), calls(10, t0=9 * S + 50 * S, name="write",
                                             step_ns=S)))
    out += sz.flush()
    (final,) = [j for j in out if j.final]
    assert final.session["gap_ns"]["c"] == 18 * S + 50 * S
