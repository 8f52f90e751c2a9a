"""Proposed hot-path changes, swapped in at run time so their gain can be measured.

Nothing here ships: each replacement stands for an edit to the file its
docstring names, and keeps that function's behaviour (the worker benchmark
checks that sessions and feature vectors come out identical). ``applied()``
swaps them in for the duration of a ``with`` block.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

from systerns.core import sessions, syscalls
from systerns.core.events import EventBatch, ProcessInfo
from systerns.producers import sysdig
from systerns.schemas import records

Part = Literal["core", "collector", "worker"]
#: Bound of each memo table below (hostile input cannot grow them further).
MEMO_MAX = 65_536


class SyscallRow(NamedTuple):
    """``core/events.py``: ``Syscall`` as a NamedTuple instead of a frozen dataclass.

    A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__``;
    a NamedTuple is built by ``tuple.__new__``, about twice as fast, with the same
    attribute names and immutability. (Equality with a plain tuple is the one
    behaviour that differs; no caller relies on it.)
    """

    ts_ns: int
    tid: int
    name: str
    res: int = 0
    arg: str = ""


def record_to_batch(rec: dict) -> EventBatch:
    """``schemas/records.py`` ``record_to_batch`` building ``SyscallRow`` events."""
    info = ProcessInfo(
        host=rec["host"],
        container_id=rec["container_id"],
        pid=rec["pid"],
        ppid=rec["ppid"],
        comm=rec["comm"],
        exe=rec["exe"],
        cmdline=rec["cmdline"],
        container_image=rec.get("container_image", ""),
    )
    events = tuple(
        [SyscallRow(e["ts_ns"], e["tid"], e["name"], e["res"], e["arg"])
         for e in rec["events"]]
    )
    return EventBatch(info, events, rec.get("source", "sysdig"))  # type: ignore[arg-type]


_BIGRAM_KEYS: dict[tuple[str, str], str] = {}


def bigram_key(prev: str, cur: str) -> str:
    """``core/sessions.py``: the bucket of a pair, as its string key, memoised.

    ``_add_event`` formats, encodes, hashes and stringifies every pair of every
    event; syscall names are few, so the pairs repeat almost always.
    """
    key = _BIGRAM_KEYS.get((prev, cur))
    if key is None:
        key = str(zlib.crc32(f"{prev}>{cur}".encode()) % sessions.BIGRAM_BUCKETS)
        if len(_BIGRAM_KEYS) < MEMO_MAX:
            _BIGRAM_KEYS[(prev, cur)] = key
    return key


_PATH_CLASSES: dict[str, str] = {}


def classify_path(arg: str) -> str:
    """``core/syscalls.py``: ``classify_path`` memoised per exact argument.

    The prefix scan walks up to 52 prefixes; most paths a process touches
    (libraries, /proc, /etc) come back again and again.
    """
    cls = _PATH_CLASSES.get(arg)
    if cls is None:
        cls = _ORIGINAL["classify_path"](arg)
        if len(_PATH_CLASSES) >= MEMO_MAX:
            _PATH_CLASSES.clear()
        _PATH_CLASSES[arg] = cls
    return cls


_SKIP_PATH_CLASSES = frozenset({"lib", "ld_cache", "locale"})


def add_events(state: dict, events) -> None:
    """``core/sessions.py``: fold a run of events into one session in one loop.

    Replaces one ``_add_event`` call per event: the state's counters live in
    locals until the run ends, its dicts are looked up once, the thread list is
    mirrored by a set for membership, and pairs and paths go through the memo
    tables above. The resulting state is the same, key for key.
    """
    n, failed = state["n_events"], state["failed"]
    first_ts, last_ts = state["first_ts_ns"], state["last_ts_ns"]
    counts, bigrams, paths = state["counts"], state["bigrams"], state["paths"]
    tids, last, samples = state["tids"], state["last_by_tid"], state["sample_paths"]
    seen_tids = set(tids)
    max_tids = sessions.MAX_TRACKED_TIDS
    path_calls = syscalls.PATH_SYSCALLS
    pair_keys = _BIGRAM_KEYS
    for ev in events:
        ts, tid, name = ev.ts_ns, ev.tid, ev.name
        n += 1
        if ts > last_ts:
            last_ts = ts
        if ts < first_ts:
            first_ts = ts
        counts[name] = counts.get(name, 0) + 1
        if ev.res < 0:
            failed += 1
        if tid not in seen_tids and len(tids) < max_tids:
            tids.append(tid)
            seen_tids.add(tid)
        stid = str(tid)
        prev = last.get(stid)
        if prev is not None:
            b = pair_keys.get((prev, name)) or bigram_key(prev, name)
            bigrams[b] = bigrams.get(b, 0) + 1
            last[stid] = name
        elif len(last) < max_tids:
            last[stid] = name
        arg = ev.arg
        if arg and name in path_calls:
            cls = classify_path(arg)
            paths[cls] = paths.get(cls, 0) + 1
            if (len(samples) < sessions.MAX_SAMPLE_PATHS and arg not in samples
                    and cls not in _SKIP_PATH_CLASSES):
                samples.append(arg[:200])
    state["n_events"], state["failed"] = n, failed
    state["first_ts_ns"], state["last_ts_ns"] = first_ts, last_ts


def ingest(self: sessions.Sessionizer, batch: EventBatch, *, partition: int = 0,
           wall_ns: int = 0) -> list[sessions.Judgement]:
    """``core/sessions.py`` ``Sessionizer.ingest`` folding runs with ``add_events``.

    The batch is cut into runs of events that belong to one session (a run ends
    before a successful ``execve`` and after the leader's exit); each run is
    folded by ``add_events``. Opening, closing and judging are unchanged.
    """
    info = batch.process
    key = info.key
    events = batch.events
    policy = self.policy
    out: list[sessions.Judgement] = []
    state = self.store.get(key)
    exec_types, exit_types = sessions.EXEC_TYPES, sessions.EXIT_TYPES
    if state is not None and not sessions._same_image(state, info) and not any(
        e.name in exec_types for e in events
    ):
        out.append(self._close(key, state, "exit"))
        state = None
    first_judge_ns = int(policy.first_judge_s * 1e9)
    pid = info.pid
    i, n = 0, len(events)
    while i < n:
        ev = events[i]
        if state is None:
            if len(self.store) >= policy.max_sessions:
                out.extend(self._evict_oldest(partition))
            state = sessions.new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
            state["next_judge_ns"] = ev.ts_ns + first_judge_ns
        if ev.name in exec_types and ev.res >= 0 and state["n_events"] > 0:
            out.append(self._close(key, state, "exec"))
            state = sessions.new_session(info, str(ev.ts_ns), ev.ts_ns, batch.source)
            state["next_judge_ns"] = ev.ts_ns + first_judge_ns
        j = i
        exited = False
        while j < n:
            e = events[j]
            if j > i and e.name in exec_types and e.res >= 0:
                break
            j += 1
            if e.name in exit_types and e.tid == pid:
                exited = True
                break
        run = events[i:j]
        add_events(state, run)
        top = max(e.ts_ns for e in run)
        if top > self.watermark_ns:
            self.watermark_ns = top
        if exited:
            out.append(self._close(key, state, "exit"))
            state = None
        i = j
    if state is not None:
        state.update(comm=info.comm, exe=info.exe, cmdline=info.cmdline,
                     ppid=info.ppid, container_image=info.container_image,
                     partition=partition, seen_wall_ns=wall_ns)
        if (state["n_events"] >= policy.min_events
                and state["last_ts_ns"] >= state["next_judge_ns"]):
            state["next_judge_ns"] = state["last_ts_ns"] + int(
                policy.judge_every_s * 1e9)
            state["judgements"] += 1
            out.append(sessions.Judgement(sessions.snapshot(state), "running", False))
        self.store[key] = state
    return [j for j in out if j.session["n_events"] >= policy.min_events
            or j.session["judgements"] > 0]


#: sysdig filter keeping exactly the events ``parse_line`` keeps.
SYSDIG_FILTER = "evt.dir=< or evt.type in ({})".format(
    ", ".join(sorted(sysdig.ENTER_ONLY)))


def sysdig_argv(scap, *, live: bool = False) -> list[str]:
    """``producers/sysdig.py`` ``sysdig_argv``: let sysdig drop the enter halves.

    ``parse_line`` keeps exit halves and enter-only events (``procexit``) and
    drops the rest after parsing it. Given that filter, sysdig never formats the
    dropped events as JSON (most of its own time) and the reader never parses
    them; the batches are the same (checked by the collector benchmark).
    """
    return [*_ORIGINAL["sysdig_argv"](scap, live=live), SYSDIG_FILTER]


_ORIGINAL = {
    "classify_path": syscalls.classify_path,
    "sysdig_argv": sysdig.sysdig_argv,
}


class _NoSpinner:
    """Stands for ``faust.utils.terminal.Spinner`` in a worker with no terminal."""

    def __new__(cls, *args: object, **kwargs: object) -> None:  # type: ignore[misc]
        return None


def _swaps(part: Part) -> list[tuple[object, str, object]]:
    if part == "core":
        from systerns.streams import app

        return [(sessions.Sessionizer, "ingest", ingest),
                (records, "record_to_batch", record_to_batch),
                (app, "record_to_batch", record_to_batch)]
    if part == "collector":
        return [(sysdig, "sysdig_argv", sysdig_argv)]
    # ``cli/worker.py``: a worker without a terminal needs no progress spinner.
    # Faust's Worker, when it has one, sets the root logger to DEBUG and adds a
    # handler so every log call spins it: aiokafka's per-request debug lines are
    # then all formatted into records. ``worker.spinner = None`` after building
    # the Worker (before ``execute_from_commandline``) keeps the root at WARNING.
    from faust.utils import terminal

    return [(terminal, "Spinner", _NoSpinner)]


def apply_for_good(part: Part) -> None:
    """Swap one part's proposals in for the rest of the process (worker runs)."""
    for mod, name, new in _swaps(part):
        setattr(mod, name, new)


@contextmanager
def applied(part: Part = "core") -> Iterator[None]:
    """Swap one part's proposed functions in, and the originals back afterwards.

    Args:
        part: ``core`` (records to sessions), ``collector`` (the sysdig
            reader) or ``worker`` (the Faust worker's set-up).
    """
    swaps = _swaps(part)
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in swaps]
    try:
        for mod, name, new in swaps:
            setattr(mod, name, new)
        yield
    finally:
        for mod, name, old in saved:
            setattr(mod, name, old)


#: ``schemas/avro/event_batch/v2.avsc`` as proposed: the events as parallel
#: arrays (one per field) instead of an array of records. fastavro then builds
#: five lists per batch instead of one dict per event.
COLUMNAR_EVENT_BATCH = {
    "type": "record", "name": "EventBatch", "namespace": "io.systerns.events",
    "fields": [
        {"name": "host", "type": "string"},
        {"name": "container_id", "type": "string"},
        {"name": "container_image", "type": "string", "default": ""},
        {"name": "pid", "type": "long"},
        {"name": "ppid", "type": "long"},
        {"name": "comm", "type": "string"},
        {"name": "exe", "type": "string"},
        {"name": "cmdline", "type": "string"},
        {"name": "source", "type": "string"},
        {"name": "ts_ns", "type": {"type": "array", "items": "long"}},
        {"name": "tid", "type": {"type": "array", "items": "long"}},
        {"name": "name", "type": {"type": "array", "items": "string"}},
        {"name": "res", "type": {"type": "array", "items": "long"}},
        {"name": "arg", "type": {"type": "array", "items": "string"}},
    ],
}
_EVENT_FIELDS = ("ts_ns", "tid", "name", "res", "arg")


def to_columnar(rec: dict) -> dict:
    """A v1 ``event_batch`` record in the proposed columnar layout."""
    out = {k: v for k, v in rec.items() if k != "events"}
    for f in _EVENT_FIELDS:
        out[f] = [e[f] for e in rec["events"]]
    return out


def columnar_record_to_batch(rec: dict) -> EventBatch:
    """``record_to_batch`` for the columnar layout (``SyscallRow`` events)."""
    info = ProcessInfo(
        host=rec["host"], container_id=rec["container_id"], pid=rec["pid"],
        ppid=rec["ppid"], comm=rec["comm"], exe=rec["exe"], cmdline=rec["cmdline"],
        container_image=rec.get("container_image", ""),
    )
    events = tuple(map(SyscallRow, rec["ts_ns"], rec["tid"], rec["name"],
                       rec["res"], rec["arg"]))
    return EventBatch(info, events, rec.get("source", "sysdig"))  # type: ignore[arg-type]
