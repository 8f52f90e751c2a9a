"""Avro schemas: every version loads, round-trips, and evolves compatibly."""

from __future__ import annotations

import json

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from systerns.core.errors import SchemaError
from systerns.schemas.codec import SUBJECTS, Codec, versions


def _parse(raw: dict):
    return avro.schema.parse(json.dumps(raw))


PAIRS = [(s, old.version, new.version) for s in SUBJECTS
         for old, new in zip(versions(s), versions(s)[1:])]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_version_parses_with_the_reference_library(subject):
    for v in versions(subject):
        assert _parse(v.raw).type == "record"


@pytest.mark.parametrize(("subject", "old", "new"), PAIRS or [pytest.param(
    "alert", 1, 1, marks=pytest.mark.skip(reason="one version of each subject so far"))])
def test_each_change_is_backward_and_forward_compatible(subject, old, new):
    vs = {v.version: v for v in versions(subject)}
    checker = ReaderWriterCompatibilityChecker()
    backward = checker.get_compatibility(_parse(vs[new].raw), _parse(vs[old].raw))
    forward = checker.get_compatibility(_parse(vs[old].raw), _parse(vs[new].raw))
    assert backward.compatibility is SchemaCompatibilityType.compatible
    assert forward.compatibility is SchemaCompatibilityType.compatible


def test_the_checker_does_catch_a_breaking_change():
    """Guards the guard: removing a required field without default must fail."""
    raw = versions("alert")[-1].raw
    broken = dict(raw, fields=[f for f in raw["fields"] if f["name"] != "reason"]
                  + [{"name": "new_required", "type": "string"}])
    checker = ReaderWriterCompatibilityChecker()
    result = checker.get_compatibility(_parse(broken), _parse(raw))
    assert result.compatibility is SchemaCompatibilityType.incompatible


def test_single_object_encoding_carries_the_fingerprint():
    codec = Codec("dead_letter")
    rec = {"stage": "s", "reason": "r", "detail": "", "source": "x", "raw": b"\xff",
           "ts_ms": 1}
    data = codec.encode(rec)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == versions("dead_letter")[-1].fingerprint
    assert codec.decode(data) == rec


@pytest.mark.parametrize("bad", [b"", b"{}", b"\xc3\x01" + b"\x00" * 8 + b"x",
                                 b"\xc3\x01\x01\x02"])
def test_bad_messages_raise_schema_error(bad):
    with pytest.raises(SchemaError):
        Codec("alert").decode(bad)


def test_bytes_after_a_valid_datum_are_refused():
    codec = Codec("dead_letter")
    data = codec.encode({"stage": "s", "reason": "r", "detail": "", "source": "x",
                         "raw": b"", "ts_ms": 1})
    with pytest.raises(SchemaError) as exc:
        codec.decode(data + b"\x00garbage")
    assert exc.value.reason == "trailing_bytes"


def test_another_subject_is_refused():
    dl = Codec("dead_letter").encode({"stage": "s", "reason": "r", "detail": "",
                                      "source": "x", "raw": b"", "ts_ms": 1})
    with pytest.raises(SchemaError) as exc:
        Codec("alert").decode(dl)
    assert exc.value.reason == "wrong_subject"


def test_a_record_that_does_not_fit_is_refused():
    with pytest.raises(SchemaError):
        Codec("dead_letter").encode({"stage": 3})


def test_out_of_range_integers_still_encode():
    from systerns.core.events import EventBatch, ProcessInfo, Syscall
    from systerns.schemas.records import as_i64, batch_to_record, record_to_batch

    assert as_i64(2**64 - 1) == -1
    assert as_i64(10**30) == 2**63 - 1
    assert as_i64(-(10**30)) == -(2**63)
    batch = EventBatch(ProcessInfo("h", "c", 1, 0, "x", "x", "x"),
                       (Syscall(1, 1, "mmap", 2**64 - 12, ""),
                        Syscall(2, 1, "read", 10**40, "")))
    codec = Codec("event_batch")
    back = record_to_batch(codec.decode(codec.encode(batch_to_record(batch))))
    assert [e.res for e in back.events] == [-12, 2**63 - 1]


def _real_batches(scap_dir) -> list:
    from systerns.core.events import EventBatch
    from systerns.producers.sysdig import read_capture

    return [b for b in read_capture(scap_dir / "falco/psp_run_as_user_0_container.scap",
                                    "schema-node") if isinstance(b, EventBatch)]


def test_event_batches_travel_as_arrays_and_both_layouts_decode(scap_dir, sysdig):
    """v2 writes the columnar arrays; v1 messages (older collectors) still decode."""
    import io

    import fastavro

    from systerns.schemas.records import (
        batch_to_record,
        batch_to_record_v1,
        record_to_batch,
    )

    batches = _real_batches(scap_dir)
    assert sum(len(b) for b in batches) > 100
    new, old = Codec("event_batch"), Codec("event_batch", version=1)
    assert new.writer.version == 2
    v1, v2 = versions("event_batch")[0], versions("event_batch")[1]
    for batch in batches:
        rec = batch_to_record(batch)
        assert rec["events"] == [] and len(rec["name"]) == len(batch)
        assert record_to_batch(new.decode(new.encode(rec))) == batch
        data = old.encode(batch_to_record_v1(batch))
        assert data[2:10] == v1.fingerprint
        decoded = new.decode(data)
        # The shortcut for added fields gives what schema resolution gives.
        assert decoded == fastavro.schemaless_reader(io.BytesIO(data[10:]),
                                                     v1.parsed, v2.parsed)
        assert record_to_batch(decoded) == batch


@pytest.mark.parametrize("change", ["short_column", "both_layouts",
                                    "both_layouts_without_times"])
def test_inconsistent_columns_are_refused(change):
    from systerns.core.events import EventBatch, ProcessInfo, Syscall
    from systerns.schemas.records import batch_to_record, record_to_batch

    batch = EventBatch(ProcessInfo("h", "c", 1, 0, "x", "x", "x"),
                       (Syscall(1, 1, "openat", 3, "/etc/passwd"),
                        Syscall(2, 1, "read", 10, "")))
    rec = batch_to_record(batch)
    if change == "short_column":
        rec["arg"] = rec["arg"][:1]
    elif change == "both_layouts_without_times":
        rec["events"] = [{"ts_ns": 1, "tid": 1, "name": "read", "res": 0, "arg": ""}]
        rec["ts_ns"] = []
    else:
        rec["events"] = [{"ts_ns": 1, "tid": 1, "name": "read", "res": 0, "arg": ""}]
    codec = Codec("event_batch")
    with pytest.raises(ValueError):
        record_to_batch(codec.decode(codec.encode(rec)))
