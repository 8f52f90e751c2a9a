"""Versioned Avro schemas and their wire encoding.

Every message carries its writer schema's identity with Avro single-object
encoding: ``C3 01``, the schema's 8-byte CRC-64-AVRO fingerprint (little
endian), then the binary datum. A reader resolves any known version of a
subject to the newest one, so an older producer and a newer consumer (or the
reverse) keep working; an unknown fingerprint is a ``SchemaError``.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from systerns.core.errors import SchemaError

SCHEMA_DIR = Path(__file__).parent / "avro"
MAGIC = b"\xc3\x01"
SUBJECTS = ("event_batch", "verdict", "alert", "dead_letter")
_VERSION_RE = re.compile(r"^v(\d+)\.avsc$")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One version of one subject."""

    subject: str
    version: int
    raw: dict
    parsed: dict
    fingerprint: bytes


def _load(path: Path, subject: str, version: int) -> SchemaVersion:
    raw = json.loads(path.read_text())
    parsed = fastavro.parse_schema(raw, _write_hint=False)
    canonical = to_parsing_canonical_form(parsed)
    fp = int(fingerprint(canonical, "CRC-64-AVRO"), 16).to_bytes(8, "little")
    return SchemaVersion(subject, version, raw, parsed, fp)


@cache
def versions(subject: str) -> tuple[SchemaVersion, ...]:
    """Every stored version of a subject, oldest first.

    Raises:
        SchemaError: the subject has no schema files.
    """
    folder = SCHEMA_DIR / subject
    found = []
    for path in folder.glob("v*.avsc"):
        m = _VERSION_RE.match(path.name)
        if m:
            found.append(_load(path, subject, int(m.group(1))))
    if not found:
        raise SchemaError("unknown_subject", subject)
    return tuple(sorted(found, key=lambda s: s.version))


def latest(subject: str) -> SchemaVersion:
    """The newest version of a subject: what this code writes and reads into."""
    return versions(subject)[-1]


@cache
def _by_fingerprint() -> dict[bytes, SchemaVersion]:
    return {v.fingerprint: v for s in SUBJECTS for v in versions(s)}


#: Field types whose JSON default is the decoded value itself.
_PLAIN_TYPES = frozenset({"string", "long", "int", "boolean", "double", "float"})


def _plain_default(field: dict) -> bool:
    kind = field["type"]
    if isinstance(kind, dict) and kind.get("type") == "array":
        return isinstance(field.get("default"), list) and not field["default"]
    return kind in _PLAIN_TYPES and "default" in field


@cache
def _added_fields(subject: str, writer_version: int,
                  reader_version: int) -> dict | None:
    """Reader fields an older writer lacks, with their defaults, or None.

    Only when that is the whole difference (every writer field is in the reader
    with the same type, each added field has a plain default) can a message be
    read with its writer's schema and completed with the defaults; anything
    else goes through Avro schema resolution.
    """
    by_version = {v.version: v for v in versions(subject)}
    writer, reader = by_version[writer_version], by_version[reader_version]
    if writer.raw.get("name") != reader.raw.get("name"):
        return None
    theirs = {f["name"]: f for f in writer.raw["fields"]}
    ours = {f["name"]: f for f in reader.raw["fields"]}
    if any(name not in ours or ours[name]["type"] != f["type"]
           for name, f in theirs.items()):
        return None
    added = {name: f for name, f in ours.items() if name not in theirs}
    if not all(_plain_default(f) for f in added.values()):
        return None
    return {name: f["default"] for name, f in added.items()}


class Codec:
    """Encodes and decodes one subject with single-object encoding.

    Args:
        subject: one of ``SUBJECTS``.
        version: the writer version; the newest when None.
    """

    def __init__(self, subject: str, version: int | None = None) -> None:
        self.subject = subject
        all_versions = versions(subject)
        self.writer = (
            all_versions[-1]
            if version is None
            else next(v for v in all_versions if v.version == version)
        )
        self.reader = all_versions[-1]
        self._header = MAGIC + self.writer.fingerprint

    def encode(self, record: dict) -> bytes:
        """Serialize a record; raises ``SchemaError`` when it does not fit."""
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self.writer.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaError("record_does_not_fit", f"{self.subject}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes) -> dict:
        """Deserialize a message of any known version of this subject.

        Raises:
            SchemaError: not single-object encoded, unknown fingerprint, another
                subject's schema, a datum that does not match its schema, or
                bytes left after the datum.
        """
        if not isinstance(data, bytes | bytearray) or data[:2] != MAGIC:
            raise SchemaError("not_single_object", "missing C3 01 header", data or b"")
        writer = _by_fingerprint().get(bytes(data[2:10]))
        if writer is None:
            raise SchemaError("unknown_schema", data[2:10].hex(), data)
        if writer.subject != self.subject:
            raise SchemaError(
                "wrong_subject", f"{writer.subject} on {self.subject}", data
            )
        body = io.BytesIO(data[10:])
        reader = self.reader
        added = None
        if writer is not reader:
            added = _added_fields(self.subject, writer.version, reader.version)
            if added is not None:
                # Read as written, then add the new fields' defaults: the same
                # record as schema resolution gives, several times faster.
                reader = writer
        try:
            datum = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
            raise SchemaError("bad_datum", f"{type(exc).__name__}: {exc}", data) from exc
        left = len(data) - 10 - body.tell()
        if left:
            # A valid datum with bytes after it: a forged or corrupted message.
            raise SchemaError("trailing_bytes", f"{left} bytes after the datum", data)
        if added:
            for name, default in added.items():
                datum[name] = list(default) if isinstance(default, list) else default
        return datum
