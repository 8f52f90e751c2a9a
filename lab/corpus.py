"""Reads a recorded lab corpus back as event batches and labelled sessions.

``load_corpus`` parses every trace of the manifest into ``EventBatch`` lists.
``iter_sessions`` folds each run through its own ``Sessionizer`` and labels the
judged sessions:

* the run's main process (the traced command's pid, from its last successful
  ``execve`` on, i.e. the labelled program itself and not the ``unshare`` or
  ``bash -c 'exec -a'`` wrappers before it) gets the run's label;
* any other process gets the label of the catalog program it executed, found
  by its executable path (``/usr/bin/sort`` under a bash script is "sort", a
  forked bash subshell is "bash");
* everything else is dropped: wrapper images, the miner's ``sh``/``modprobe``
  children, and forks of renamed copies, whose comm is a disguise.

Each run gets a fresh sessionizer (keys carry the run id as container id, so
runs never mix), and batches are fed in slices of ``chunk_events`` so that
``running`` judgements fall near the times a live worker would make them: a
miner is judged a few seconds after it starts, not only when it exits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import structlog

from systerns.core.errors import SourceError
from systerns.core.events import EventBatch
from systerns.core.sessions import Judgement, Sessionizer, SessionPolicy
from systerns.lab.miner import sha256_file
from systerns.producers.trace import TraceStats, parse_trace_file

log = structlog.get_logger(__name__)

LAB_HOST = "lab"
CHUNK_EVENTS = 32
#: Mid-life views: every run is replayed a second time without the start of
#: its labelled program (``MIDLIFE_SHARE`` of its life, at most
#: ``MIDLIFE_SKIP_S`` seconds), as a worker meets a process that was already
#: running when its collector started (the normal case on a node: daemons and
#: miners started long before, and any command may be half done). Benign and
#: malicious runs alike, so a missing start says nothing about the label. Its
#: snapshots are never final. XMRig's benchmark runs get none: without a pool
#: their steady state is threads hashing with no syscall at all, which is not
#: what a mining XMRig does (it talks to its pool) and, seen through syscalls,
#: is an idle daemon. The Perl miner gets none either: once started, all its
#: main thread does is wait in ``select`` and read or write a line on its
#: socket now and then, which is exactly what ``sshd``, ``screen`` or
#: ``emacs`` do; trained on such views, a model called those miners on the
#: real captures (seven alerts). Its start (modules loaded, ithreads made)
#: is what tells it apart.
MIDLIFE_SKIP_S = 3.0
MIDLIFE_NONE = frozenset({"xmrig", "plminer"})
MIDLIFE_SHARE = 0.4
_SYSTEM_BIN_DIRS = ("/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/", "/usr/local/bin/")


def load_manifest(corpus_dir: Path) -> dict:
    """The corpus manifest.

    Raises:
        SourceError: no manifest in ``corpus_dir``.
    """
    path = Path(corpus_dir) / "manifest.json"
    if not path.is_file():
        raise SourceError(f"no lab corpus at {corpus_dir} (manifest.json missing)")
    return json.loads(path.read_text())


def load_corpus(
    corpus_dir: Path, *, split: str | None = None, verify: bool = True
) -> list[dict]:
    """Every run of a corpus with its parsed batches.

    Args:
        corpus_dir: folder holding ``manifest.json`` and ``traces/``.
        split: only ``train`` or ``test`` runs when given.
        verify: check each trace's SHA-256 against the manifest.

    Returns:
        Per run: the manifest's fields plus ``batches`` (list of ``EventBatch``,
        container id = run id), ``n_events``, ``parse_errors``, ``main_pid`` and
        ``main_exec_ts_ns`` (start of the labelled program's image).

    Raises:
        SourceError: no manifest, a trace is missing, or its checksum differs.
    """
    corpus_dir = Path(corpus_dir)
    manifest = load_manifest(corpus_dir)
    out = []
    for run in manifest["runs"]:
        if split is not None and run.get("split") != split:
            continue
        path = corpus_dir / run["trace"]
        if not path.is_file():
            raise SourceError(f"trace missing: {path}")
        if verify and sha256_file(path) != run["sha256"]:
            raise SourceError(f"trace changed since recording: {path}")
        if verify and run.get("cpu") and sha256_file(corpus_dir / run["cpu"]) != run[
                "cpu_sha256"]:
            raise SourceError(f"CPU readings changed since recording: {path}")
        stats = TraceStats()
        batches = [
            b
            for b in parse_trace_file(
                path,
                host=LAB_HOST,
                container_id=run["run_id"],
                cwd=run["cwd"],
                root_pid=run.get("root_pid"),
                stats=stats,
            )
            if isinstance(b, EventBatch)
        ]
        main_pid = run.get("root_pid")
        exec_ts = [
            e.ts_ns
            for b in batches
            if b.process.pid == main_pid
            for e in b.events
            if e.name == "execve" and e.res == 0
        ]
        out.append(
            {
                **run,
                "batches": batches,
                "n_events": stats.syscalls,
                "parse_errors": stats.bad,
                "main_pid": main_pid,
                "main_exec_ts_ns": max(exec_ts, default=0),
            }
        )
    log.info(
        "lab_corpus_loaded",
        corpus=str(corpus_dir),
        runs=len(out),
        events=sum(r["n_events"] for r in out),
    )
    return out


def session_policy(window_s: float | None = None) -> SessionPolicy:
    """The default policy, judging running sessions every ``window_s`` if given."""
    base = SessionPolicy()
    if window_s is None:
        return base
    return SessionPolicy(
        idle_s=base.idle_s,
        judge_every_s=window_s,
        first_judge_s=min(base.first_judge_s, window_s),
        min_events=base.min_events,
        max_sessions=base.max_sessions,
    )


def _copy_state(state: dict) -> dict:
    # A running judgement shares its nested dicts with the live state, which the
    # next batch changes: copy one level down before handing it out.
    return {k: v.copy() if isinstance(v, dict | list) else v for k, v in state.items()}


def label_session(
    run: dict, session: dict, programs: dict[str, str]
) -> tuple[str, str]:
    """The (label, role) of a judged session of a run; ("", "") to drop it.

    Args:
        run: a run from ``load_corpus``.
        session: session state from the sessionizer.
        programs: label -> program path, from the manifest.
    """
    if session["pid"] == run["main_pid"]:
        if session["first_ts_ns"] >= run["main_exec_ts_ns"]:
            return run["label"], "main"
        return "", ""
    exe = session["exe"]
    by_path = {path: label for label, path in programs.items()}
    label = by_path.get(exe, "")
    if not label and exe.startswith(_SYSTEM_BIN_DIRS):
        name = exe.rsplit("/", 1)[-1]
        if name == session["comm"] and name in programs:
            label = name
    return (label, "child") if label else ("", "")


def iter_sessions(
    corpus_dir: Path,
    split: str | None = None,
    window_s: float | None = None,
    *,
    runs: list[dict] | None = None,
    policy: SessionPolicy | None = None,
    chunk_events: int = CHUNK_EVENTS,
    midlife: bool = True,
) -> Iterator[dict]:
    """Labelled session snapshots of every run, for training and evaluation.

    Args:
        corpus_dir: the corpus folder.
        split: only runs of this split.
        window_s: judge running sessions every this many seconds (first after
            ``min(3, window_s)``); the default policy when None.
        runs: already loaded runs (skips ``load_corpus``).
        policy: a full policy, overriding ``window_s``.
        chunk_events: events per slice fed to the sessionizer.
        midlife: also yield each run's mid-life view (``MIDLIFE_SHARE``).

    Yields:
        Dicts with ``run_id``, ``split``, ``label``, ``malicious``, ``role``
        (``main``/``child``), ``trigger`` (``running``, ``exit``, ``exec``,
        ``end``), ``final``, ``view`` (``full`` or ``midlife``; mid-life
        snapshots are never final) and ``session`` (a copy of the state, ready
        for ``core.features.vectorize``).
    """
    programs = load_manifest(corpus_dir).get("programs", {})
    if runs is None:
        runs = load_corpus(corpus_dir, split=split)
    pol = policy or session_policy(window_s)
    for run in runs:
        if split is not None and run.get("split") != split:
            continue
        yield from _replay(run, run["batches"], pol, chunk_events, programs, "full")
        cut = _midlife_cut(run) if midlife else None
        if cut is not None:
            later = [
                EventBatch(b.process, kept, b.source)
                for b in run["batches"]
                if (kept := tuple(e for e in b.events if e.ts_ns >= cut))
            ]
            yield from _replay(run, later, pol, chunk_events, programs, "midlife")


def _midlife_cut(run: dict) -> int | None:
    """Event time from which the mid-life view starts; None without a start."""
    start = int(run.get("main_exec_ts_ns") or 0)
    if not start or run.get("label") in MIDLIFE_NONE:
        return None
    last = max(
        (b.events[-1].ts_ns for b in run["batches"]
         if b.events and b.process.pid == run["main_pid"]),
        default=0,
    )
    if last <= start:
        return None
    return start + int(min(MIDLIFE_SKIP_S * 1e9, (last - start) * MIDLIFE_SHARE))


def _replay(
    run: dict,
    batches: list[EventBatch],
    pol: SessionPolicy,
    chunk_events: int,
    programs: dict,
    view: str,
) -> Iterator[dict]:
    sz = Sessionizer({}, pol)
    for batch in batches:
        for i in range(0, len(batch.events), chunk_events):
            part = (
                batch
                if len(batch.events) <= chunk_events
                else EventBatch(
                    batch.process, batch.events[i : i + chunk_events], batch.source
                )
            )
            yield from _labelled(run, sz.ingest(part), programs, view)
    yield from _labelled(run, sz.flush(), programs, view)


def _labelled(
    run: dict, judgements: list[Judgement], programs: dict, view: str = "full"
) -> Iterator[dict]:
    for j in judgements:
        label, role = label_session(run, j.session, programs)
        if not label:
            continue
        yield {
            "run_id": run["run_id"],
            "split": run.get("split"),
            "label": label,
            "malicious": bool(run["malicious"]) if role == "main" else False,
            "role": role,
            "trigger": j.trigger,
            "final": j.final and view == "full",
            "view": view,
            "session": _copy_state(j.session),
        }
