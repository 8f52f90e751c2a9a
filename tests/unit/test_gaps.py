"""Offset gaps in a step's records: found, read again, put back in place."""

from __future__ import annotations

from systerns.streams.gaps import Gap, OffsetTracker, find_gaps


def recs(*pairs, token="ev"):
    return [(p, o, f"v{p}/{o}".encode(), token) for p, o in pairs]


class FakeTracker(OffsetTracker):
    """The tracker with its two broker reads answered from a dict."""

    def __init__(self, log, committed, low=None):
        super().__init__("events", {"bootstrap.servers": "127.0.0.1:1"}, "g")
        self.log = log  # partition -> {offset: value}
        self.committed_at = committed
        self.low = low or {}
        self.reads = []

    def committed(self, partitions):
        return {p: self.committed_at[p] for p in partitions}

    def read(self, partition, start, end):
        self.reads.append((partition, start, end))
        low = self.low.get(partition, 0)
        expired = max(0, min(end, low) - start)
        got = [(o, self.log[partition][o]) for o in range(max(start, low), end)]
        return got, expired


def test_find_gaps_inside_a_step_and_against_the_expected_offset():
    records = recs((0, 5), (1, 3), (0, 6), (0, 9), (1, 4))
    assert find_gaps(records, {0: 5, 1: 1}) == [Gap(1, 1, 3, 1), Gap(0, 7, 9, 3)]
    # Repeats (at or below the expected offset) are never gaps.
    assert find_gaps(recs((0, 2), (0, 3)), {0: 5}) == []
    # An unknown partition is taken as it comes.
    assert find_gaps(recs((2, 40), (2, 41)), {}) == []


def test_fill_puts_the_skipped_records_in_front_of_the_one_that_revealed_them():
    log = {0: {o: f"v0/{o}".encode() for o in range(100)}}
    tracker = FakeTracker(log, committed={0: 84})
    step = recs(*[(0, o) for o in range(84, 100) if o != 91], token="t")
    filled = tracker.fill(step)
    assert [r[1] for r in filled.records] == list(range(84, 100))
    assert filled.records[7] == (0, 91, b"v0/91", "t")
    assert filled.refetched == 1 and filled.expired == 0
    assert tracker.reads == [(0, 91, 92)]
    tracker.note(filled.records)
    assert tracker.next == {0: 100}
    # The next step continues without a read.
    assert not tracker.check_needed(recs((0, 100), (0, 101)))


def test_first_sight_takes_the_partition_where_its_first_record_is():
    log = {0: {o: b"x" for o in range(20)}}
    tracker = FakeTracker(log, committed={0: 3})
    step = recs((0, 12), (0, 13))
    # The commit is not asked: Faust's first fetch may predate it.
    assert not tracker.check_needed(step)
    tracker.note(step)
    assert tracker.next == {0: 14}
    # Repeats below where the partition continues are not gaps either.
    assert not tracker.check_needed(recs((0, 8), (0, 14)))
    assert tracker.reads == []


def test_expired_records_are_counted_not_invented():
    log = {0: {o: b"x" for o in range(50)}}
    tracker = FakeTracker(log, committed={0: 0}, low={0: 30})
    tracker.next = {0: 20}
    filled = tracker.fill(recs((0, 40)))
    assert filled.expired == 10
    assert [r[1] for r in filled.records] == list(range(30, 41))


def test_trailing_reads_what_was_acknowledged_but_never_folded():
    log = {1: {o: b"x" for o in range(30)}}
    tracker = FakeTracker(log, committed={1: 25})
    tracker.next = {1: 22}
    filled = tracker.trailing(1, "tick")
    assert [(r[1], r[3]) for r in filled.records] == [(22, "tick"), (23, "tick"),
                                                      (24, "tick")]
    assert tracker.next[1] == 25
    # Nothing acknowledged past it: no read.
    assert tracker.trailing(1, "tick").records == []
    # A partition never seen here is not checked.
    assert tracker.trailing(2, "tick").records == []


def test_a_rebalance_forgets_partitions_given_away():
    tracker = FakeTracker({}, committed={})
    tracker.next = {0: 5, 1: 7, 2: 9}
    tracker.keep_only([0, 2])
    assert tracker.next == {0: 5, 2: 9}


def test_a_large_jump_to_the_committed_offset_is_trusted_a_small_one_read():
    from systerns.streams import gaps

    log = {0: {o: b"x" for o in range(gaps.MAX_REFETCH + 100)}}
    far = gaps.MAX_REFETCH + 50
    # Faust seeking to the group's commit after a restart: trusted, not read.
    tracker = FakeTracker(log, committed={0: far})
    tracker.next = {0: 8}
    filled = tracker.fill(recs((0, far), (0, far + 1)))
    assert tracker.reads == [] and [r[1] for r in filled.records] == [far, far + 1]
    assert tracker.trailing(0, "tick").records == []
    # The same jump past the commit is a loss: read again.
    tracker = FakeTracker(log, committed={0: 8})
    tracker.next = {0: 8}
    assert len(tracker.fill(recs((0, far))).records) == far - 8 + 1
    # A small gap is read even below the commit.
    tracker = FakeTracker(log, committed={0: 60})
    tracker.next = {0: 8}
    assert [r[1] for r in tracker.fill(recs((0, 50))).records] == list(range(8, 51))
