"""Per-process sessions: one per (host, container, pid, exec), built from batches.

A session opens on the first event of a process image and closes when the process
exits, when an ``execve`` replaces the image, when it stays idle, or when the
store is full (evicted). Long-running sessions are also judged periodically so a
process that never exits, such as a miner, gets a verdict while it runs.

State is a plain ``dict`` per process key so any mutable mapping can hold it: a
``dict`` in ``scan`` and replay, a Faust table with a changelog in the worker.
"""

from __future__ import annotations

import zlib
from collections.abc import MutableMapping
from dataclasses import dataclass

from systerns.core.events import EXEC_TYPES, EXIT_TYPES, EventBatch, ProcessInfo
from systerns.core.syscalls import PATH_SYSCALLS, classify_path

#: Hashed syscall-bigram buckets per session.
BIGRAM_BUCKETS = 128
#: Threads remembered per session (for thread counts and per-thread bigrams).
MAX_TRACKED_TIDS = 256
#: Sample paths kept as evidence.
MAX_SAMPLE_PATHS = 8


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """When sessions are judged and how many are held.

    Attributes:
        idle_s: a session with no event for this long is judged and closed.
        judge_every_s: a running session is judged again after this much event time.
        first_judge_s: a new session is first judged this soon after it starts.
        min_events: sessions with fewer syscalls are never judged.
        max_sessions: open sessions per store; the oldest is evicted past it.
    """

    idle_s: float = 30.0
    judge_every_s: float = 5.0
    first_judge_s: float = 3.0
    min_events: int = 20
    max_sessions: int = 100_000


@dataclass(frozen=True, slots=True)
class Judgement:
    """A request to judge a snapshot of a session.

    Attributes:
        session: the session state at that moment (a copy).
        trigger: ``exit``, ``exec``, ``idle``, ``running``, ``evicted`` or ``end``.
        final: the session is closed after this judgement.
    """

    session: dict
    trigger: str
    final: bool


def bigram_bucket(prev: str, cur: str) -> int:
    """Stable bucket of a syscall pair (crc32, so every process agrees)."""
    return zlib.crc32(f"{prev}>{cur}".encode()) % BIGRAM_BUCKETS


def new_session(info: ProcessInfo, exec_id: str, ts_ns: int, source: str) -> dict:
    """Empty session state for a process image."""
    return {
        "session_id": f"{info.key}/{exec_id}",
        "host": info.host,
        "container_id": info.container_id,
        "container_image": info.container_image,
        "pid": info.pid,
        "ppid": info.ppid,
        "comm": info.comm,
        "exe": info.exe,
        "cmdline": info.cmdline,
        "exec_id": exec_id,
        "source": source,
        "first_ts_ns": ts_ns,
        "last_ts_ns": ts_ns,
        "next_judge_ns": 0,
        "n_events": 0,
        "failed": 0,
        "counts": {},
        "bigrams": {},
        "paths": {},
        "tids": [],
        "last_by_tid": {},
        "sample_paths": [],
        "judgements": 0,
        "evicted": False,
        "partition": 0,
        "seen_wall_ns": 0,
    }


def snapshot(state: dict) -> dict:
    """A copy of a session that later events cannot change (two levels deep)."""
    out = dict(state)
    for k in ("counts", "bigrams", "paths", "last_by_tid"):
        out[k] = dict(state[k])
    out["tids"] = list(state["tids"])
    out["sample_paths"] = list(state["sample_paths"])
    return out


def _same_image(state: dict, info: ProcessInfo) -> bool:
    return state["exe"] == info.exe and state["comm"] == info.comm


class Sessionizer:
    """Folds event batches into sessions held in a mutable mapping.

    The mapping is keyed by process key (``host/container/pid``), the same key the
    collector gives Kafka, so a worker only ever holds its own partitions' state.
    """

    def __init__(
        self,
        store: MutableMapping[str, dict],
        policy: SessionPolicy | None = None,
    ) -> None:
        self.store = store
        self.policy = policy or SessionPolicy()
        self.watermark_ns = 0

    def ingest(
        self, batch: EventBatch, *, partition: int = 0, wall_ns: int = 0
    ) -> list[Judgement]:
        """Add a batch to its session; return the judgements it makes due.

        Args:
            batch: consecutive syscalls of one process.
            partition: the Kafka partition the batch came from (kept in the state
                so sweeps and evictions only touch their own partition).
            wall_ns: arrival time on the worker's clock, for idle sweeps of live
                traffic; 0 in offline runs, which sweep on event time.
        """
        info = batch.process
        key = info.key
        out: list[Judgement] = []
        state = self.store.get(key)
        if state is not None and not _same_image(state, info) and not any(
            e.name in EXEC_TYPES for e in batch.events
        ):
            # Same pid, another program and no execve seen: the pid was reused.
            out.append(self._close(key, state, "exit"))
            state = None
        for ev in batch.events:
            if state is None:
                if len(self.store) >= self.policy.max_sessions:
                    out.extend(self._evict_oldest(partition))
                state = new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
                state["next_judge_ns"] = ev.ts_ns + int(
                    self.policy.first_judge_s * 1e9
                )
            if ev.name in EXEC_TYPES and ev.res >= 0 and state["n_events"] > 0:
                # A successful execve replaces the image: judge the old one.
                out.append(self._close(key, state, "exec"))
                state = new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
                state["next_judge_ns"] = ev.ts_ns + int(
                    self.policy.first_judge_s * 1e9
                )
            _add_event(state, ev.ts_ns, ev.tid, ev.name, ev.res, ev.arg)
            if ev.ts_ns > self.watermark_ns:
                self.watermark_ns = ev.ts_ns
            if ev.name in EXIT_TYPES and ev.tid == info.pid:
                out.append(self._close(key, state, "exit"))
                state = None
        if state is not None:
            # The latest image wins for what the process is called.
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

    def sweep(
        self, now_ns: int | None = None, *, wall: bool = False,
        partition: int | None = None,
    ) -> list[Judgement]:
        """Close sessions idle for longer than the policy allows.

        Args:
            now_ns: the current time; the event-time watermark when None.
            wall: compare with the wall-clock arrival time instead of event time.
            partition: only sweep sessions of this partition.
        """
        now = self.watermark_ns if now_ns is None else now_ns
        limit = int(self.policy.idle_s * 1e9)
        field_name = "seen_wall_ns" if wall else "last_ts_ns"
        due = [
            k for k, s in self.store.items()
            if now - s.get(field_name, 0) > limit
            and (partition is None or s.get("partition", 0) == partition)
        ]
        out = [self._close(key, self.store[key], "idle") for key in due]
        return [j for j in out if j.session["n_events"] >= self.policy.min_events]

    def flush(self) -> list[Judgement]:
        """Close every open session (end of a capture or a replay range)."""
        out = [self._close(k, self.store[k], "end") for k in list(self.store.keys())]
        return [j for j in out if j.session["n_events"] >= self.policy.min_events]

    def _close(self, key: str, state: dict, trigger: str) -> Judgement:
        if key in self.store:
            del self.store[key]
        return Judgement(state, trigger, True)

    def _evict_oldest(self, partition: int) -> list[Judgement]:
        own = [k for k, s in self.store.items() if s.get("partition", 0) == partition]
        if not own:
            return []
        key = min(own, key=lambda k: self.store[k]["last_ts_ns"])
        state = self.store[key]
        state["evicted"] = True
        return [self._close(key, state, "evicted")]


def _add_event(state: dict, ts_ns: int, tid: int, name: str, res: int, arg: str) -> None:
    state["n_events"] += 1
    if ts_ns > state["last_ts_ns"]:
        state["last_ts_ns"] = ts_ns
    if ts_ns < state["first_ts_ns"]:
        state["first_ts_ns"] = ts_ns
    counts = state["counts"]
    counts[name] = counts.get(name, 0) + 1
    if res < 0:
        state["failed"] += 1
    tids = state["tids"]
    if tid not in tids and len(tids) < MAX_TRACKED_TIDS:
        tids.append(tid)
    last = state["last_by_tid"]
    stid = str(tid)
    prev = last.get(stid)
    if prev is not None:
        b = str(bigram_bucket(prev, name))
        state["bigrams"][b] = state["bigrams"].get(b, 0) + 1
    if prev is not None or len(last) < MAX_TRACKED_TIDS:
        last[stid] = name
    if arg and name in PATH_SYSCALLS:
        cls = classify_path(arg)
        paths = state["paths"]
        paths[cls] = paths.get(cls, 0) + 1
        samples = state["sample_paths"]
        if len(samples) < MAX_SAMPLE_PATHS and arg not in samples and cls not in (
            "lib", "ld_cache", "locale"
        ):
            samples.append(arg[:200])
