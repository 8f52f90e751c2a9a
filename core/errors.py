"""The error tree of Systerns.

    SysternsError
    ├── InputError            a record the pipeline cannot read (dead-lettered)
    │   ├── ParseError        not JSON / not a trace line / wrong field types
    │   ├── UnknownEventError an event type outside the known vocabulary
    │   └── SchemaError       wrong or unknown Avro schema on a message
    ├── SourceError           a capture or collector process failed
    │   └── DriverMissingError live capture without a kernel driver
    └── ModelError            the model server failed or answered badly
        └── ModelUnavailableError  the server is down or the breaker is open
"""

from __future__ import annotations


class SysternsError(Exception):
    """Root of every error raised by Systerns."""


class InputError(SysternsError):
    """A record that cannot be turned into an event; it goes to the dead letters.

    Attributes:
        reason: a short constant naming why (``not_json``, ``bad_field`` ...).
        raw: the offending input, truncated for the dead-letter record.
    """

    def __init__(self, reason: str, detail: str = "", raw: bytes | str = b"") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.raw = raw


class ParseError(InputError):
    """Input is not JSON, not a trace line, or has fields of the wrong type."""


class UnknownEventError(InputError):
    """The event type is outside the vocabulary the collector knows."""


class SchemaError(InputError):
    """A message carries a wrong or unknown schema."""


class SourceError(SysternsError):
    """A capture source (sysdig, strace) failed."""


class DriverMissingError(SourceError):
    """Live capture asked for, but no sysdig kernel driver is loaded."""


class ModelError(SysternsError):
    """The model server failed or gave an answer that cannot be used."""


class ModelUnavailableError(ModelError):
    """The model server cannot be reached, or the circuit breaker is open."""


class SettingsError(SysternsError, ValueError):
    """A ``SYSTERNS_*`` variable is unknown or holds a value of the wrong type."""
