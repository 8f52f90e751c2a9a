"""Records re-consumed after a worker crash are folded exactly once.

The worker's session table is a Faust table whose changelog holds, after a
SIGKILL, some prefix of the writes made so far, while the committed offset can
lag behind it. These tests replay real sysdig captures through the worker's
table wrapper, cut the write log at every record boundary, rebuild the table
from that prefix, re-consume from the committed offset, and compare the final
judgements with a run that never crashed.
"""

from __future__ import annotations

import shutil

import pytest

from systerns.core.events import EventBatch

from systerns.core.sessions import Sessionizer, SessionPolicy
from systerns.producers.sysdig import read_capture
from systerns.producers.trace import trace_command
from systerns.streams.app import _JsonTable, fold_records

POLICY = SessionPolicy(min_events=5, max_sessions=8)


class LoggedTable(dict):
    """A dict standing for a Faust table; every write is logged in order."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.log: list[tuple[int, bytes, bytes | None]] = []
        self.record = -1

    def __setitem__(self, key, value) -> None:
        self.log.append((self.record, key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.log.append((self.record, key, None))
        super().__delitem__(key)


def fold(records, table: LoggedTable, start: int = 0) -> list[tuple]:
    """Feed records from ``start`` as the worker does; return final judgements."""
    store = _JsonTable(table, partitions=1)
    sessionizer = Sessionizer(store, POLICY)
    finals = []
    for offset, batch in enumerate(records[start:], start):
        if store.already_applied(batch.process.key, 0, offset):
            continue
        table.record = offset
        store.offset = offset
        judgements = sessionizer.ingest(batch, partition=0)
        store.offset = None
        finals += [(offset, j.session["session_id"], j.session["n_events"], j.trigger)
                   for j in judgements if j.final]
    return finals


@pytest.fixture(scope="module")
def records(sysdig, scap_dir, tmp_path_factory):
    """Real batches: a sysdig capture, then a traced shell pipeline (forks, execs)."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    out = list(read_capture(scap_dir / "falco/psp_run_as_user_0_container.scap",
                            "replay-node"))
    out += trace_command(
        ["sh", "-c", "ls -l /usr/bin | sort -k5 | head -40 | wc -l; "
         "find /usr/share/doc -maxdepth 2 | tail -3"],
        host="replay-node", out_dir=tmp_path_factory.mktemp("trace"))
    batches = [b for b in out if isinstance(b, EventBatch)]
    assert len(batches) > 30
    return batches


def test_replay_after_a_crash_at_any_record_matches_an_uncrashed_run(records):
    clean = LoggedTable()
    reference = fold(records, clean)
    assert reference, "the captures close no session: nothing is tested"
    cuts = sorted({rec for rec, _k, _v in clean.log})
    assert len(cuts) > 10

    for crashed_at in cuts:
        # The changelog kept every write of the records before ``crashed_at``.
        prefix = LoggedTable()
        for rec, key, value in clean.log:
            if rec >= crashed_at:
                break
            if value is None:
                dict.__delitem__(prefix, key)
            else:
                dict.__setitem__(prefix, key, value)
        before = [f for f in reference if f[0] < crashed_at]
        for committed in sorted({0, crashed_at // 2, crashed_at}):
            after = fold(records, LoggedTable(prefix), committed)
            # No spurious or partial session, nothing judged twice, none lost.
            assert set(after) <= set(reference), (crashed_at, committed)
            assert sorted(before + after) == sorted(reference), (crashed_at, committed)


def test_without_the_offsets_a_replay_judges_a_session_twice(records):
    """The failure the offsets prevent: a re-consumed execve closes a copy."""
    clean = LoggedTable()
    reference = fold(records, clean)
    cut = max(rec for rec, _k, _v in clean.log)
    prefix = {k: v for _r, k, v in clean.log[: next(
        i for i, (rec, _k, _v) in enumerate(clean.log) if rec == cut)]}
    prefix = {k: v for k, v in prefix.items() if v is not None}
    store = _JsonTable(LoggedTable(prefix), partitions=1)
    sessionizer = Sessionizer(store, POLICY)
    # Re-consume everything, ignoring the offsets.
    again = [(j.session["session_id"], j.session["n_events"], j.trigger)
             for b in records for j in sessionizer.ingest(b, partition=0) if j.final]
    assert sorted(again) != sorted((s, n, t) for _o, s, n, t in reference)


def fold_steps(records, table: LoggedTable, start: int, step: int,
               starts: list[int] | None = None,
               policy: SessionPolicy = POLICY) -> list[tuple[int, tuple]]:
    """Feed records from ``start`` through the worker's step fold, ``step`` at a time.

    ``starts`` gets the write-log length at the start of each step. Returns
    the final judgements with the write-log length when each was kept (in the
    ``judging`` table, just before the session writes of its flush).
    """
    store = _JsonTable(table, partitions=1)
    store.recovered()
    sessionizer = Sessionizer(store, policy)
    finals: list[tuple[int, tuple]] = []
    current = [0]

    def keep(judgements) -> None:
        finals.extend((len(table.log), (current[0], j.session["session_id"],
                                        j.session["n_events"], j.trigger))
                      for j in judgements if j.final)

    def enter(offset: int) -> None:
        current[0] = offset

    for first in range(start, len(records), step):
        if starts is not None:
            starts.append(len(table.log))
        offsets = range(first, min(first + step, len(records)))
        fold_records(store, sessionizer, [(0, o, records[o], o) for o in offsets],
                     lambda b: b, keep=keep, enter=enter)
    return finals


@pytest.mark.parametrize("step", [3, 16])
def test_replay_after_a_crash_at_any_write_of_a_step_matches_an_uncrashed_run(
        records, step):
    """Records folded in steps, the changelog cut after any of their writes."""
    reference = fold(records, LoggedTable())
    clean = LoggedTable()
    starts: list[int] = []
    stepped = fold_steps(records, clean, 0, step, starts)
    # Holding the writes for a step changes nothing in what is judged.
    assert [f for _k, f in stepped] == reference

    # The store's cap (8) is reached: some steps evict sessions.
    assert any(f[3] == "evicted" for _k, f in stepped)
    for cut in range(len(clean.log) + 1):
        prefix = LoggedTable()
        for _rec, key, value in clean.log[:cut]:
            if value is None:
                dict.__delitem__(prefix, key)
            else:
                dict.__setitem__(prefix, key, value)
        # Finals kept before the crash; those of the flush it interrupted may
        # be judged again (verdicts are at-least-once), no other.
        before = {f for k, f in stepped if k <= cut}
        last_keep = max((k for k, _f in stepped if k <= cut), default=-1)
        again_ok = {f for k, f in stepped if k == last_keep}
        # Faust acks a step after its flush: the consumer restarts at the
        # first record of the step the crash was in, or further back.
        in_step = max(s for s, at in enumerate(starts) if at <= cut)
        for committed in sorted({0, max(in_step - 1, 0) * step, in_step * step}):
            for again_step in sorted({1, step, 7}):
                after = [f for _k, f in fold_steps(records, LoggedTable(prefix),
                                                  committed, again_step)]
                where = (cut, committed, again_step)
                # No spurious or partial session, none lost, none twice.
                assert set(after) <= set(reference), where
                assert before | set(after) == set(reference), where
                assert len(after) == len(set(after)), where
                assert {f for f in after if f in before} <= again_ok, where


def test_a_step_writes_each_changed_session_once(records):
    """The point of the steps: fewer changelog writes than record by record."""
    roomy = SessionPolicy(min_events=5)
    by_record = LoggedTable()
    store = _JsonTable(by_record, partitions=1)
    sessionizer = Sessionizer(store, roomy)
    for offset, batch in enumerate(records):
        store.offset = offset
        sessionizer.ingest(batch, partition=0)
    stepped = LoggedTable()
    fold_steps(records, stepped, 0, 16, policy=roomy)

    def states(log) -> int:
        return sum(1 for _r, key, value in log if value is not None
                   and not key.startswith(b"\x00") and b'"closed"' not in value[:12])

    assert states(stepped.log) < states(by_record.log) / 2
    # Same sessions left open, each key written last with the same state.
    assert {k: v for k, v in stepped.items() if b'"seen_wall_ns"' in v}.keys() == {
        k for k, v in by_record.items() if b'"seen_wall_ns"' in v}
