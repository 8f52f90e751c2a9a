"""Partition end offsets, asked again while a new topic's leadership settles.

Right after a topic is created (by a test, the worker's changelog or a replay
target), the broker can answer a watermark request with "not leader" or
"unknown partition" for a moment. Those answers are retriable; anything else,
or a topic that stays unready past the deadline, is raised to the caller.
"""

from __future__ import annotations

import time

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

log = structlog.get_logger(__name__)

RETRIABLE = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
})


def watermarks(consumer: Consumer, topic: str, partition: int,
               timeout_s: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets of one partition, retried on transient broker answers."""
    deadline = time.monotonic() + timeout_s
    tries = 0
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                  timeout=10)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            tries += 1
            if code not in RETRIABLE or time.monotonic() > deadline:
                raise
            if tries == 1:
                log.info("watermarks_retry", topic=topic, partition=partition,
                         error=str(err))
            time.sleep(0.5)
