"""Event records the consumer skipped, found by their offsets and read again.

Faust's consumer can lose a record around a rebalance: it is acknowledged, so
its offset may be committed, but it never reaches the agent (seen in the
crash test as one record of 249 missing from the middle of a step). The
offsets of a partition written without transactions are dense, so the worker
knows which offset each partition should continue from. A record past it
reveals a gap; the records in the gap are read again by offset and folded in
their place, before the record that revealed them.

Where a partition continues from:

- after a record of it was folded here: that record's offset + 1;
- at first sight in this process: wherever its first record is (Faust's first
  fetch after a start can come before the committed offsets are visible, so
  the commit is no reliable start);
- forgotten when a rebalance gives the partition to another worker.

A skipped record with nothing after it is found by ``trailing``: a committed
offset past where the partition continues means Faust acknowledged records the
agent never saw. Records that retention deleted before they could be read again
are counted and logged as expired: nothing else can bring them back.

Reading a gap again is always safe (the sessions table skips records it holds
already), so small gaps are read whatever their cause. A large one that ends
at or below the group's committed offset is Faust seeking to that offset after
a restart (its first fetch can come before the committed offsets are visible):
other workers folded those records, and reading millions of them again would
stall the partition, so the commit is trusted (``gap_trusted_to_commit``).

Plain confluent-kafka, no Faust. The worker calls these inside its agent steps,
without awaiting: a step that yields to the event loop mid-way lets a rebalance
start in the middle of it, and Faust's buffered stream was seen to stall for
good after that. The reads are short (a few records, one broker round trip),
bounded by ``timeout_s``, and happen only when a gap shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from systerns.streams.offsets import watermarks

log = structlog.get_logger(__name__)

#: (partition, offset, value, token) of one event record, as a step folds it.
Record = tuple[int, int, bytes, Any]

#: Gaps up to this many records are read again whatever the committed offset.
MAX_REFETCH = 10_000


@dataclass(slots=True)
class Gap:
    """Offsets ``start`` to ``end`` (exclusive) of ``partition`` never seen.

    Attributes:
        before: index, in the step's records, of the record that revealed the
            gap (the refetched records go in front of it); None for a trailing
            gap found from the committed offset.
    """

    partition: int
    start: int
    end: int
    before: int | None = None


@dataclass(slots=True)
class Filled:
    """A step's records with its gaps filled, and what filling them found."""

    records: list[Record]
    refetched: int = 0
    expired: int = 0


def find_gaps(records: Sequence[Record], expected: dict[int, int]) -> list[Gap]:
    """Gaps in a step's records, given where each partition should continue.

    Partitions missing from ``expected`` are taken as they come. A record at or
    below the expected offset is a repeat (the sessions table tells whether it
    is folded already), never a gap.
    """
    nxt = dict(expected)
    gaps = []
    for i, (partition, offset, _value, _token) in enumerate(records):
        want = nxt.get(partition)
        if want is not None and offset > want:
            gaps.append(Gap(partition, want, offset, i))
        if want is None or offset + 1 > want:
            nxt[partition] = offset + 1
    return gaps


class OffsetTracker:
    """Where each partition of the events topic continues, and the reads that fill gaps.

    Args:
        topic: the events topic.
        kafka_config: confluent-kafka client settings (bootstrap, security).
        group_id: the worker group (whose committed offsets tell where Faust
            starts); this client only reads them and never commits.
    """

    def __init__(self, topic: str, kafka_config: dict[str, str], group_id: str,
                 *, timeout_s: float = 10.0) -> None:
        self.topic = topic
        self.config = kafka_config | {"group.id": group_id,
                                      "enable.auto.commit": False,
                                      # A gap is a few records: no 64 MB prefetch.
                                      "queued.max.messages.kbytes": 1024,
                                      "log_level": 0}
        self.timeout_s = timeout_s
        self.next: dict[int, int] = {}
        self._consumer: Consumer | None = None

    # -- where partitions continue -------------------------------------------
    def check_needed(self, records: Sequence[Record]) -> bool:
        """Whether a step has a gap (and needs the broker)."""
        return bool(find_gaps(records, self.next))

    def note(self, records: Iterable[Record]) -> None:
        """Records folded (or refused): their partitions continue after them."""
        nxt = self.next
        for partition, offset, _value, _token in records:
            if offset + 1 > nxt.get(partition, -1):
                nxt[partition] = offset + 1

    def keep_only(self, partitions: Iterable[int]) -> None:
        """After a rebalance: forget the partitions this worker no longer has."""
        keep = set(partitions)
        for p in list(self.next):
            if p not in keep:
                del self.next[p]

    # -- broker reads (blocking, bounded by timeout_s) ------------------------
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self.config)
        return self._consumer

    def committed(self, partitions: Iterable[int]) -> dict[int, int]:
        """The group's committed offset per partition (its first offset if none)."""
        consumer = self.consumer()
        tps = consumer.committed([TopicPartition(self.topic, p) for p in partitions],
                                 timeout=self.timeout_s)
        out = {}
        for tp in tps:
            if tp.error is not None:
                raise KafkaException(tp.error)
            if tp.offset < 0:  # nothing committed
                out[tp.partition] = watermarks(consumer, self.topic, tp.partition,
                                                  self.timeout_s)[0]
            else:
                out[tp.partition] = tp.offset
        return out

    def read(self, partition: int, start: int, end: int) -> tuple[list[tuple[int, bytes]], int]:
        """Records ``start`` to ``end`` (exclusive) of a partition, and how many expired.

        Raises:
            TimeoutError: the broker did not return the range in time (the
                worker logs it and tries again; the step's records stay
                unacknowledged meanwhile).
        """
        consumer = self.consumer()
        low, _high = watermarks(consumer, self.topic, partition, self.timeout_s)
        expired = max(0, min(end, low) - start)
        start = max(start, low)
        out: list[tuple[int, bytes]] = []
        if start >= end:
            return out, expired
        consumer.assign([TopicPartition(self.topic, partition, start)])
        deadline = time.monotonic() + self.timeout_s
        try:
            while start < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.topic}/{partition}: offsets {start}..{end - 1} "
                        f"not read within {self.timeout_s:.0f} s")
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    log.warning("refetch_poll_error", partition=partition,
                                error=str(msg.error()))
                    continue
                offset = msg.offset()
                if offset < start:
                    continue
                if offset >= end:
                    break
                out.append((offset, msg.value() or b""))
                start = offset + 1
        finally:
            consumer.unassign()
        return out, expired

    def _read_gap(self, gap: Gap, token: Any, filled: Filled) -> list[Record]:
        """A gap's records, read again under ``token``; counted into ``filled``."""
        got, expired = self.read(gap.partition, gap.start, gap.end)
        filled.refetched += len(got)
        filled.expired += expired
        log.warning("records_refetched", topic=self.topic, partition=gap.partition,
                    first=gap.start, last=gap.end - 1, read=len(got), expired=expired,
                    trailing=gap.before is None)
        if expired:
            log.error("records_expired", topic=self.topic, partition=gap.partition,
                      first=gap.start, records=expired)
        return [(gap.partition, off, value, token) for off, value in got]

    def _worth_reading(self, gaps: list[Gap]) -> list[Gap]:
        """The gaps to read again: small ones, and large ones past the commit."""
        large = {g.partition for g in gaps if g.end - g.start > MAX_REFETCH}
        if not large:
            return gaps
        committed = self.committed(sorted(large))
        out = []
        for g in gaps:
            if g.partition in large and g.end - g.start > MAX_REFETCH \
                    and g.end <= committed[g.partition]:
                log.info("gap_trusted_to_commit", topic=self.topic, partition=g.partition,
                         first=g.start, last=g.end - 1, committed=committed[g.partition])
                continue
            out.append(g)
        return out

    def fill(self, records: Sequence[Record]) -> Filled:
        """The step's records with every gap read again and put in its place."""
        gaps = self._worth_reading(find_gaps(records, self.next))
        if not gaps:
            return Filled(list(records))
        inserts: dict[int, list[Record]] = {}
        filled = Filled([])
        for gap in gaps:
            got = self._read_gap(gap, records[gap.before][3], filled)
            inserts.setdefault(gap.before, []).extend(got)
        for i, rec in enumerate(records):
            filled.records.extend(inserts.get(i, ()))
            filled.records.append(rec)
        return filled

    def trailing(self, partition: int, token: Any) -> Filled:
        """Records acknowledged past the last one folded here, read again.

        Args:
            token: the event the refetched records are folded under (its
                partition is ``partition``).
        """
        want = self.next.get(partition)
        if want is None:
            return Filled([])
        committed = self.committed([partition])[partition]
        if committed <= want:
            return Filled([])
        gap = Gap(partition, want, committed)
        filled = Filled([])
        if self._worth_reading([gap]):
            filled.records = self._read_gap(gap, token, filled)
        # Trusted or expired records are not read: the partition continues after them.
        self.next[partition] = committed
        return filled

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
