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
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from systerns.core.events import (
    CPU_EVENT,
    EXEC_TYPES,
    EXIT_TYPES,
    EventBatch,
    ProcessInfo,
    Syscall,
)
from systerns.core.syscalls import PATH_SYSCALLS, classify_path

#: Hashed syscall-bigram buckets per session.
BIGRAM_BUCKETS = 128
#: Threads remembered per session (for thread counts and per-thread bigrams).
MAX_TRACKED_TIDS = 256
#: Sample paths kept as evidence.
MAX_SAMPLE_PATHS = 8
#: Distinct syscall names counted per session ("other" included), and the
#: longest name counted as itself; the rest are counted as ``OTHER_SYSCALL``.
MAX_DISTINCT_SYSCALLS = 512
MAX_SYSCALL_NAME = 40
OTHER_SYSCALL = "other"
#: Log buckets of sizes and gaps (``SHAPE_BUCKETS`` of each histogram).
SHAPE_BUCKETS = 12
#: Syscall families that wait rather than work: the gap after one is time spent
#: blocked, not computing.
WAIT_SYSCALLS = frozenset({
    "futex", "poll", "select", "epoll_wait", "nanosleep", "wait", "accept",
    "sigsuspend", "sigtimedwait", "recv", "pause",
})
#: Families whose non-negative return is a byte count read (``r``) or written
#: (``w``).
IO_KINDS: dict[str, str] = {
    "read": "r", "pread": "r", "readv": "r", "recv": "r",
    "write": "w", "pwrite": "w", "writev": "w", "send": "w", "sendfile": "w",
}
#: Gap classes by the syscall that opened the gap: ``b`` blocked in a wait,
#: ``r`` after reading data (CPU per byte), ``c`` any other (compute).
GAP_CLASS: dict[str, str] = {
    **{n: "b" for n in WAIT_SYSCALLS},
    "read": "r", "pread": "r", "readv": "r",
}
_GAP_CLASSES = "bcr"
#: A thread's gap longer than this is not counted in the gap state at all: it is
#: a hole in what was observed (the collector was down, or two captures of one
#: host were published one after the other), not time the thread spent
#: computing or waiting. Lab recordings never have one (runs last <= 20 s).
MAX_OBSERVED_GAP_NS = 60 * 1_000_000_000
#: Gap class index of a syscall family (``c``, 1, for any other).
_GAP_INDEX: dict[str, int] = {n: _GAP_CLASSES.index(c) for n, c in GAP_CLASS.items()}
#: State keys of the gap histogram, class-major: ``b0``..``b11``, ``c0``.., ``r0``..
_GAP_KEYS: tuple[str, ...] = tuple(
    f"{c}{b}" for c in _GAP_CLASSES for b in range(SHAPE_BUCKETS)
)
_BUCKET_KEYS: tuple[str, ...] = tuple(str(b) for b in range(SHAPE_BUCKETS))
_TOP_BUCKET = SHAPE_BUCKETS - 1
_IO_INDEX: dict[str, int] = {n: 0 if k == "r" else 1 for n, k in IO_KINDS.items()}


def size_bucket(n: int) -> int:
    """Log bucket of a byte count: 0 for 0, then one per factor of four."""
    return min((n.bit_length() + 1) >> 1, _TOP_BUCKET)


def gap_bucket(gap_ns: int) -> int:
    """Log bucket of a gap: one per factor of four from ~2 us (11: over ~2 s)."""
    return min((max(gap_ns, 0) >> 10).bit_length() >> 1, _TOP_BUCKET)


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


#: Bound of the bigram key memo; hostile syscall names cannot grow it further.
BIGRAM_MEMO_MAX = 65_536
_BIGRAM_KEYS: dict[tuple[str, str], str] = {}


def bigram_key(prev: str, cur: str) -> str:
    """The session-state key of a syscall pair's bucket, memoised.

    Syscall names are few, so pairs repeat almost always; the memo saves
    formatting, encoding, hashing and stringifying each one. Past
    ``BIGRAM_MEMO_MAX`` pairs new ones are computed every time.
    """
    key = _BIGRAM_KEYS.get((prev, cur))
    if key is None:
        key = str(bigram_bucket(prev, cur))
        if len(_BIGRAM_KEYS) < BIGRAM_MEMO_MAX:
            _BIGRAM_KEYS[(prev, cur)] = key
    return key


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
        "t_last": {},
        "gaps": {},
        "gap_ns": {},
        "gap_tw": {},
        "io_rd": {},
        "io_wr": {},
        "io_bytes": {},
        "cpu": {},
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
    for k in _SHAPE_KEYS:
        if k in state:
            out[k] = dict(state[k])
    out["tids"] = list(state["tids"])
    out["sample_paths"] = list(state["sample_paths"])
    if "cpu" in state:
        out["cpu"] = {k: list(v) for k, v in state["cpu"].items()}
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
        events = batch.events
        policy = self.policy
        out: list[Judgement] = []
        state = self.store.get(key)
        if state is not None and not _same_image(state, info) and not any(
            e.name in EXEC_TYPES for e in events
        ):
            if all(e.name == CPU_EVENT for e in events):
                # CPU readings named after another image (the collector still
                # held the old one's name): they say nothing of this session.
                return []
            # Same pid, another program and no execve seen: the pid was reused.
            out.append(self._close(key, state, "exit"))
            state = None

        # Cut the batch into runs of one session each: a run ends before a
        # successful execve (after its first event) and after the leader's exit.
        first_judge_ns = int(policy.first_judge_s * 1e9)
        pid = info.pid
        i, n = 0, len(events)
        while i < n:
            ev = events[i]
            if state is None and ev.name == CPU_EVENT:
                # A reading never opens a session: before the process's first
                # syscall, or after its exit, there is nothing to read it into.
                i += 1
                continue
            if state is None:
                if len(self.store) >= policy.max_sessions:
                    out.extend(self._evict_oldest(partition))
                state = new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
                state["next_judge_ns"] = ev.ts_ns + first_judge_ns
            if ev.name in EXEC_TYPES and ev.res >= 0 and state["n_events"] > 0:
                # A successful execve replaces the image: judge the old one.
                out.append(self._close(key, state, "exec"))
                state = new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
                state["next_judge_ns"] = ev.ts_ns + first_judge_ns
            j = i + 1
            exited = ev.name in EXIT_TYPES and ev.tid == pid
            while j < n and not exited:
                e = events[j]
                if e.name in EXEC_TYPES and e.res >= 0:
                    break
                j += 1
                exited = e.name in EXIT_TYPES and e.tid == pid
            top = _add_events(state, events[i:j] if i or j < n else events)
            if top > self.watermark_ns:
                self.watermark_ns = top
            if exited:
                out.append(self._close(key, state, "exit"))
                state = None
            i = j
        if state is not None:
            # The latest image wins for what the process is called.
            state.update(comm=info.comm, exe=info.exe, cmdline=info.cmdline,
                         ppid=info.ppid, container_image=info.container_image,
                         partition=partition, seen_wall_ns=wall_ns)
            # CPU readings keep a process whose threads went quiet on the
            # schedule: a miner's hashing threads make no syscalls.
            now_ts = max(state["last_ts_ns"], state.get("cpu_ts_ns", 0))
            if (state["n_events"] >= policy.min_events
                    and now_ts >= state["next_judge_ns"]):
                state["next_judge_ns"] = now_ts + int(policy.judge_every_s * 1e9)
                state["judgements"] += 1
                out.append(Judgement(snapshot(state), "running", False))
            self.store[key] = state
        return [j for j in out if j.session["n_events"] >= policy.min_events
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
            if now - (s.get(field_name, 0) if wall else max(
                s.get(field_name, 0), s.get("cpu_ts_ns", 0))) > limit
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
        # Readings count as activity: a miner whose threads went quiet is alive.
        key = min(own, key=lambda k: max(self.store[k]["last_ts_ns"],
                                         self.store[k].get("cpu_ts_ns", 0)))
        state = self.store[key]
        state["evicted"] = True
        return [self._close(key, state, "evicted")]


#: Path classes never kept as sample paths (every process touches them).
_UNSAMPLED_CLASSES = frozenset({"lib", "ld_cache", "locale"})
#: Timing and I/O shape state (FEATURE_VERSION 2). A session restored from
#: state written before they existed gets them empty on its next event.
_SHAPE_KEYS = ("t_last", "gaps", "gap_ns", "gap_tw", "io_rd", "io_wr", "io_bytes")


def _add_event(state: dict, ts_ns: int, tid: int, name: str, res: int, arg: str) -> None:
    """Fold one event into a session (``_add_events`` of a one-event run)."""
    _add_events(state, (Syscall(ts_ns, tid, name, res, arg),))


def _add_events(state: dict, events: Sequence[Syscall]) -> int:
    """Fold a run of events of one session into its state.

    One loop per run rather than one call per event: the state's counters live
    in locals until the run ends, its dicts are looked up once, the thread list
    is mirrored by a set for membership, and pairs and paths go through memos.

    Args:
        state: the session (mutated in place).
        events: consecutive syscalls of the session, at least one.

    Returns:
        The largest timestamp in the run (for the event-time watermark).
    """
    n_events, failed = state["n_events"], state["failed"]
    first_ts, last_ts = state["first_ts_ns"], state["last_ts_ns"]
    counts, bigrams, paths = state["counts"], state["bigrams"], state["paths"]
    tids, last, samples = state["tids"], state["last_by_tid"], state["sample_paths"]
    if "t_last" not in state:
        for k in _SHAPE_KEYS:
            state.setdefault(k, {})
    t_last = state["t_last"]
    cpu = state.get("cpu")
    if cpu is None:
        cpu = state["cpu"] = {}
    cpu_ts = state.get("cpu_ts_ns", 0)
    # Shape counters live in flat lists during the run and are merged into the
    # state's string-keyed dicts once at its end.
    gap_n = [0] * (3 * SHAPE_BUCKETS)
    gap_t = [0] * SHAPE_BUCKETS
    class_ns = [0, 0, 0]
    io_n = [0] * (2 * SHAPE_BUCKETS)
    io_b = [0, 0]
    gap_index, io_index, top_bucket = _GAP_INDEX, _IO_INDEX, _TOP_BUCKET
    max_gap = MAX_OBSERVED_GAP_NS
    nb = SHAPE_BUCKETS
    seen_tids = set(tids)
    pair_keys = _BIGRAM_KEYS
    top = events[0].ts_ns
    for ts, tid, name, res, arg in events:
        if ts > top:
            top = ts
        if name == CPU_EVENT:
            # A CPU reading, not a syscall: it moves its thread's CPU window and
            # keeps the session alive (``cpu_ts_ns``), nothing else.
            _cpu_reading(cpu, t_last, tid, ts, res)
            if ts > cpu_ts:
                cpu_ts = ts
            continue
        if ts > last_ts:
            last_ts = ts
        if ts < first_ts:
            first_ts = ts
        n_events += 1
        c = counts.get(name)
        if c is None and (len(counts) >= MAX_DISTINCT_SYSCALLS - 1
                          or len(name) > MAX_SYSCALL_NAME):
            # Unknown numbers (strace's syscall_0x3e8) or hostile names: past
            # the cap they share one slot, so the state stays bounded.
            name = OTHER_SYSCALL
            c = counts.get(name)
        counts[name] = (c or 0) + 1
        if res < 0:
            failed += 1
        if tid not in seen_tids and len(tids) < MAX_TRACKED_TIDS:
            tids.append(tid)
            seen_tids.add(tid)
        stid = str(tid)
        prev = last.get(stid)
        if prev is not None:
            b = pair_keys.get((prev, name)) or bigram_key(prev, name)
            bigrams[b] = bigrams.get(b, 0) + 1
            last[stid] = name
            # The gap since this thread's previous syscall, by what that was.
            pt = t_last.get(stid)
            if pt is not None:
                gap = ts - pt if ts > pt else 0
                if gap <= max_gap:
                    gb = (gap >> 10).bit_length() >> 1
                    if gb > top_bucket:
                        gb = top_bucket
                    gc = gap_index.get(prev, 1)
                    gap_n[gc * nb + gb] += 1
                    class_ns[gc] += gap
                    if gc:
                        gap_t[gb] += gap
            t_last[stid] = ts
        elif len(last) < MAX_TRACKED_TIDS:
            last[stid] = name
            t_last[stid] = ts
        if res >= 0:
            io = io_index.get(name)
            if io is not None:
                sb = (res.bit_length() + 1) >> 1
                io_n[io * nb + (sb if sb < top_bucket else top_bucket)] += 1
                io_b[io] += res
        if arg and name in PATH_SYSCALLS:
            cls = classify_path(arg)
            paths[cls] = paths.get(cls, 0) + 1
            if (len(samples) < MAX_SAMPLE_PATHS and arg not in samples
                    and cls not in _UNSAMPLED_CLASSES):
                samples.append(arg[:200])
    state["n_events"], state["failed"] = n_events, failed
    state["first_ts_ns"], state["last_ts_ns"] = first_ts, last_ts
    if cpu_ts:
        state["cpu_ts_ns"] = cpu_ts
    _merge_shape(state, gap_n, gap_t, class_ns, io_n, io_b)
    return top


def _cpu_reading(cpu: dict, t_last: dict, tid: int, ts: int, cpu_ns: int) -> None:
    """Move a thread's CPU window ``[first ts, first cpu, last ts, last cpu, silent]``.

    The first reading of a thread is its baseline (CPU it spent before the
    session, or before the collector saw it, is not the session's). CPU spent
    between two readings with no syscall of the thread in between adds to
    ``silent`` (a hashing thread's work). Readings that go back in time or in
    CPU are ignored.
    """
    stid = str(tid)
    w = cpu.get(stid)
    if w is None:
        if len(cpu) < MAX_TRACKED_TIDS and cpu_ns >= 0:
            cpu[stid] = [ts, cpu_ns, ts, cpu_ns, 0]
    elif ts > w[2] and cpu_ns >= w[3]:
        if t_last.get(stid, 0) <= w[2]:
            w[4] += cpu_ns - w[3]
        w[2], w[3] = ts, cpu_ns


def _merge_shape(
    state: dict,
    gap_n: list[int],
    gap_t: list[int],
    class_ns: list[int],
    io_n: list[int],
    io_b: list[int],
) -> None:
    """Add a run's flat shape counters to the session's string-keyed dicts."""
    gaps, gap_tw = state["gaps"], state["gap_tw"]
    for i, n in enumerate(gap_n):
        if n:
            k = _GAP_KEYS[i]
            gaps[k] = gaps.get(k, 0) + n
    for i, ns in enumerate(gap_t):
        if ns:
            k = _BUCKET_KEYS[i]
            gap_tw[k] = gap_tw.get(k, 0) + ns
    gap_ns = state["gap_ns"]
    for c, ns in zip(_GAP_CLASSES, class_ns, strict=True):
        if ns:
            gap_ns[c] = gap_ns.get(c, 0) + ns
    for hist, off in ((state["io_rd"], 0), (state["io_wr"], SHAPE_BUCKETS)):
        for i in range(SHAPE_BUCKETS):
            n = io_n[off + i]
            if n:
                k = _BUCKET_KEYS[i]
                hist[k] = hist.get(k, 0) + n
    io_bytes = state["io_bytes"]
    for k, b in zip("rw", io_b, strict=True):
        if b:
            io_bytes[k] = io_bytes.get(k, 0) + b
