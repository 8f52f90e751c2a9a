"""The run-folding ``Sessionizer.ingest`` against a per-event reference.

``Sessionizer.ingest`` cuts each batch into runs of one session and folds a run
in one loop (``_add_events``), with memoised bigram keys and path classes. The
reference below is the straightforward per-event fold it replaced, kept here
only to check that the fast one gives the same sessions and the same
judgements, key for key, on real recorded events: the readable sysdig captures
and a command recorded with strace in the test. The real batches are also
re-cut into other sizes (so an ``execve`` or the leader's exit falls in the
middle of a batch, and events follow an exit in the same batch) and folded onto
a few pids (so pids are reused by other programs), and small policies force
running judgements, idle sweeps and evictions.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from systerns.core.errors import SourceError
from systerns.core.events import EXEC_TYPES, EXIT_TYPES, EventBatch, Syscall
from systerns.core.sessions import (
    GAP_CLASS,
    IO_KINDS,
    MAX_OBSERVED_GAP_NS,
    MAX_SAMPLE_PATHS,
    MAX_TRACKED_TIDS,
    Judgement,
    SessionPolicy,
    Sessionizer,
    _same_image,
    bigram_bucket,
    gap_bucket,
    new_session,
    size_bucket,
    snapshot,
)
from systerns.core.syscalls import (
    PATH_SYSCALLS,
    _classify_path,
    classify_path,
)
from systerns.producers.sysdig import read_capture
from systerns.producers.trace import TraceStats, trace_command

S = 1_000_000_000


class ReferenceSessionizer(Sessionizer):
    """The per-event ``ingest`` and ``_add_event``, with no memo and no runs."""

    def ingest(self, batch: EventBatch, *, partition: int = 0,
               wall_ns: int = 0) -> list[Judgement]:
        info = batch.process
        key = info.key
        out: list[Judgement] = []
        state = self.store.get(key)
        if state is not None and not _same_image(state, info) and not any(
            e.name in EXEC_TYPES for e in batch.events
        ):
            out.append(self._close(key, state, "exit"))
            state = None
        for ev in batch.events:
            if state is None:
                if len(self.store) >= self.policy.max_sessions:
                    out.extend(self._evict_oldest(partition))
                state = new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
                state["next_judge_ns"] = ev.ts_ns + int(self.policy.first_judge_s * 1e9)
            if ev.name in EXEC_TYPES and ev.res >= 0 and state["n_events"] > 0:
                out.append(self._close(key, state, "exec"))
                state = new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
                state["next_judge_ns"] = ev.ts_ns + int(self.policy.first_judge_s * 1e9)
            reference_add_event(state, ev)
            if ev.ts_ns > self.watermark_ns:
                self.watermark_ns = ev.ts_ns
            if ev.name in EXIT_TYPES and ev.tid == info.pid:
                out.append(self._close(key, state, "exit"))
                state = None
        if state is not None:
            state.update(comm=info.comm, exe=info.exe, cmdline=info.cmdline,
                         ppid=info.ppid, container_image=info.container_image,
                         partition=partition, seen_wall_ns=wall_ns)
            if (state["n_events"] >= self.policy.min_events
                    and state["last_ts_ns"] >= state["next_judge_ns"]):
                state["next_judge_ns"] = state["last_ts_ns"] + int(
                    self.policy.judge_every_s * 1e9)
                state["judgements"] += 1
                out.append(Judgement(snapshot(state), "running", False))
            self.store[key] = state
        return [j for j in out if j.session["n_events"] >= self.policy.min_events
                or j.session["judgements"] > 0]


def reference_add_event(state: dict, ev: Syscall) -> None:
    """One event into a session, every step spelled out."""
    ts_ns, tid, name, res, arg = ev.ts_ns, ev.tid, ev.name, ev.res, ev.arg
    state["n_events"] += 1
    state["last_ts_ns"] = max(state["last_ts_ns"], ts_ns)
    state["first_ts_ns"] = min(state["first_ts_ns"], ts_ns)
    state["counts"][name] = state["counts"].get(name, 0) + 1
    if res < 0:
        state["failed"] += 1
    if tid not in state["tids"] and len(state["tids"]) < MAX_TRACKED_TIDS:
        state["tids"].append(tid)
    last = state["last_by_tid"]
    prev = last.get(str(tid))
    if prev is not None:
        b = str(bigram_bucket(prev, name))
        state["bigrams"][b] = state["bigrams"].get(b, 0) + 1
    if prev is not None:
        pt = state["t_last"].get(str(tid))
        gap = max(ts_ns - pt, 0) if pt is not None else 0
        if pt is not None and gap <= MAX_OBSERVED_GAP_NS:
            cls = GAP_CLASS.get(prev, "c")
            key = f"{cls}{gap_bucket(gap)}"
            state["gaps"][key] = state["gaps"].get(key, 0) + 1
            if gap:
                state["gap_ns"][cls] = state["gap_ns"].get(cls, 0) + gap
            if cls != "b" and gap:
                b = str(gap_bucket(gap))
                state["gap_tw"][b] = state["gap_tw"].get(b, 0) + gap
    if prev is not None or len(last) < MAX_TRACKED_TIDS:
        last[str(tid)] = name
        state["t_last"][str(tid)] = ts_ns
    if res >= 0 and name in IO_KINDS:
        kind = IO_KINDS[name]
        hist = state["io_rd"] if kind == "r" else state["io_wr"]
        hist[str(size_bucket(res))] = hist.get(str(size_bucket(res)), 0) + 1
        if res:
            state["io_bytes"][kind] = state["io_bytes"].get(kind, 0) + res
    if arg and name in PATH_SYSCALLS:
        cls = _classify_path(arg)
        state["paths"][cls] = state["paths"].get(cls, 0) + 1
        samples = state["sample_paths"]
        if (len(samples) < MAX_SAMPLE_PATHS and arg not in samples
                and cls not in ("lib", "ld_cache", "locale")):
            samples.append(arg[:200])


# --- real inputs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def capture_batches(scap_dir: Path, sysdig: str) -> list[EventBatch]:
    """Every batch of every readable real capture, capture after capture."""
    out: list[EventBatch] = []
    for scap in sorted(scap_dir.rglob("*.scap")):
        got: list[EventBatch] = []
        try:
            got = [b for b in read_capture(scap, f"h-{scap.stem}")
                   if isinstance(b, EventBatch)]
        except SourceError:
            continue  # the truncated capture; its partial read is left out
        out.extend(got)
    if sum(len(b) for b in out) < 5_000:
        pytest.skip("too few readable capture events")
    return out


@pytest.fixture(scope="module")
def traced_batches(tmp_path_factory: pytest.TempPathFactory) -> list[EventBatch]:
    """A shell recorded with strace: children, a threaded python, a final exec."""
    if shutil.which("strace") is None or shutil.which("python3") is None:
        pytest.skip("strace or python3 is not installed")
    script = (
        "ls -la / /etc > /dev/null; cat /etc/hostname /etc/passwd > /dev/null; "
        "python3 -c 'import threading, os; "
        "ts = [threading.Thread(target=os.listdir, args=(\"/proc\",)) "
        "for _ in range(3)]; [t.start() for t in ts]; [t.join() for t in ts]'; "
        "exec ls /usr/lib"
    )
    stats = TraceStats()
    batches = list(trace_command(["sh", "-c", script], host="h-trace",
                                 out_dir=tmp_path_factory.mktemp("trace"),
                                 stats=stats))
    assert stats.exit_code == 0
    return batches


def recut(batches: Iterable[EventBatch], size: int) -> Iterator[EventBatch]:
    """The same events per process key, in batches of ``size`` events.

    A batch takes the process identity of the last original batch it draws
    from, as a collector batching a process across its execve would send it.
    """
    pending: dict[str, tuple[EventBatch, list[Syscall]]] = {}
    for b in batches:
        _, evs = pending.get(b.process.key, (b, []))
        evs.extend(b.events)
        pending[b.process.key] = (b, evs)
        while len(evs) >= size:
            yield dataclasses.replace(b, events=tuple(evs[:size]))
            del evs[:size]
        if not evs:
            del pending[b.process.key]
    for b, evs in pending.values():
        yield dataclasses.replace(b, events=tuple(evs))


def fold_pids(batches: Iterable[EventBatch], slots: int) -> Iterator[EventBatch]:
    """The same events with pids and tids folded onto ``slots`` numbers per host.

    Different programs then share a process key one after another, as when the
    kernel reuses a pid; a leader's exit stays the leader's.
    """
    def fold(n: int) -> int:
        return 1_000 + n % slots

    for b in batches:
        info = dataclasses.replace(b.process, pid=fold(b.process.pid))
        evs = tuple(e._replace(tid=fold(e.tid)) for e in b.events)
        yield EventBatch(info, evs, b.source)


def run_both(batches: list[EventBatch], policy: SessionPolicy,
             sweep_every: int = 0) -> tuple[Sessionizer, list]:
    """Feed both sessionizers; assert each step's judgements are the same."""
    fast, ref = Sessionizer({}, policy), ReferenceSessionizer({}, policy)
    judged: list[Judgement] = []
    for i, b in enumerate(batches):
        part = i % 3
        got = fast.ingest(b, partition=part, wall_ns=i)
        want = ref.ingest(b, partition=part, wall_ns=i)
        assert got == want, f"batch {i} of {b.process.key}"
        judged += got
        if sweep_every and i % sweep_every == 0:
            got, want = fast.sweep(partition=part), ref.sweep(partition=part)
            assert got == want
            judged += got
    assert fast.store == ref.store
    assert fast.watermark_ns == ref.watermark_ns
    got, want = fast.flush(), ref.flush()
    assert got == want
    return fast, judged + got


SMALL = SessionPolicy(idle_s=0.5, judge_every_s=0.05, first_judge_s=0.01,
                      min_events=5, max_sessions=6)


def test_capture_batches_give_the_same_sessions(capture_batches):
    _, judged = run_both(capture_batches, SessionPolicy())
    assert {j.trigger for j in judged} >= {"exit", "end"}
    assert sum(j.session["n_events"] for j in judged if j.final) > 0


@pytest.mark.parametrize("size", [1, 7, 300, 5_000])
def test_recut_capture_batches_with_small_policy(capture_batches, size):
    batches = list(recut(capture_batches, size))
    _, judged = run_both(batches, SMALL, sweep_every=5)
    triggers = {j.trigger for j in judged}
    assert {"exit", "running", "evicted"} <= triggers, triggers


@pytest.mark.parametrize("slots", [3, 17])
def test_reused_pids_with_small_policy(capture_batches, slots):
    batches = list(recut(fold_pids(capture_batches, slots), 64))
    _, judged = run_both(batches, SMALL, sweep_every=11)
    # Pid reuse by another program closes the old session as an exit.
    assert sum(j.trigger == "exit" for j in judged) > 0


@pytest.mark.parametrize("size", [1, 5, 300, 10_000])
def test_traced_command_with_exec_mid_batch(traced_batches, size):
    batches = list(recut(traced_batches, size))
    if size >= 300:
        assert any(e.name in EXEC_TYPES and i > 0
                   for b in batches for i, e in enumerate(b.events))
    _, judged = run_both(batches, SessionPolicy(min_events=5, first_judge_s=0.001,
                                                judge_every_s=0.01), sweep_every=3)
    assert "exec" in {j.trigger for j in judged}


@pytest.mark.parametrize("size", [1, 300])
def test_traced_command_folded_onto_one_pid(traced_batches, size):
    batches = list(recut(fold_pids(traced_batches, 1), size))
    if size >= 300:
        # The leader's exit is followed by the next program's events.
        assert any(e.name in EXIT_TYPES and e.tid == b.process.pid
                   and i < len(b.events) - 1
                   for b in batches for i, e in enumerate(b.events))
    _, judged = run_both(batches, SMALL)
    assert len({j.session["session_id"] for j in judged if j.final}) > 1


def test_path_memo_is_bounded_and_agrees(monkeypatch):
    from systerns.core import syscalls

    monkeypatch.setattr(syscalls, "PATH_MEMO_MAX", 10)
    monkeypatch.setattr(syscalls, "_PATH_MEMO", {})
    paths = [f"/proc/{i}/stat" for i in range(25)] + ["/usr/lib/x", "a", "1.2.3.4:80"]
    for p in paths * 2:
        assert classify_path(p) == _classify_path(p)
        assert len(syscalls._PATH_MEMO) <= 10


def test_bigram_memo_is_bounded_and_agrees(monkeypatch):
    from systerns.core import sessions

    monkeypatch.setattr(sessions, "BIGRAM_MEMO_MAX", 4)
    monkeypatch.setattr(sessions, "_BIGRAM_KEYS", {})
    names = ["read", "write", "open", "close"]
    for a in names:
        for b in names:
            assert sessions.bigram_key(a, b) == str(bigram_bucket(a, b))
    assert len(sessions._BIGRAM_KEYS) == 4
