"""Watermark requests retried on transient leadership answers, not on others."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from systerns.streams import offsets


class FlakyConsumer:
    def __init__(self, failures: list[int]):
        self.failures = list(failures)
        self.calls = 0

    def get_watermark_offsets(self, tp, timeout=None):
        self.calls += 1
        if self.failures:
            raise KafkaException(KafkaError(self.failures.pop(0)))
        return (0, 42)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(offsets.time, "sleep", lambda s: None)


def test_not_leader_is_retried_until_the_partition_answers():
    c = FlakyConsumer([KafkaError.NOT_LEADER_FOR_PARTITION,
                       KafkaError.UNKNOWN_TOPIC_OR_PART])
    assert offsets.watermarks(c, "t", 0) == (0, 42)
    assert c.calls == 3


def test_a_non_transient_error_is_raised_at_once():
    c = FlakyConsumer([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        offsets.watermarks(c, "t", 0)
    assert c.calls == 1


def test_a_partition_that_never_settles_is_raised_after_the_deadline():
    c = FlakyConsumer([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaException):
        offsets.watermarks(c, "t", 0, timeout_s=0.0)
    assert c.calls <= 2 and c.failures, "gave up while the partition still failed"
