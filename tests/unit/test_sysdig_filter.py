"""sysdig's own filter leaves out only what the reader would drop (real captures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from systerns.core.errors import InputError, SourceError
from systerns.core.events import EventBatch
from systerns.producers.sysdig import SYSDIG_FILTER, ReadStats, read_capture, sysdig_argv


def read_all(scap: Path, *, filtered: bool) -> tuple[list, list, str, ReadStats]:
    """Batches, input-error reasons, the failure if any, and the counters."""
    stats = ReadStats()
    items: list = []
    failure = ""
    try:
        items.extend(read_capture(scap, "h", stats, filtered=filtered))
    except SourceError as exc:
        failure = type(exc).__name__
    batches = [b for b in items if isinstance(b, EventBatch)]
    reasons = [e.reason for e in items if isinstance(e, InputError)]
    return batches, reasons, failure, stats


def test_the_filter_is_on_by_default(sysdig):
    argv = sysdig_argv(Path("x.scap"))
    assert argv[-1] == SYSDIG_FILTER
    assert SYSDIG_FILTER not in sysdig_argv(Path("x.scap"), filtered=False)
    assert sysdig_argv(None, live=True)[-1] == SYSDIG_FILTER


def test_every_capture_gives_the_same_batches_with_and_without_the_filter(
    scap_dir, sysdig
):
    compared = 0
    for scap in sorted(scap_dir.rglob("*.scap")):
        plain = read_all(scap, filtered=False)
        fast = read_all(scap, filtered=True)
        assert fast[0] == plain[0], scap.name
        assert fast[1] == plain[1], scap.name
        assert fast[2] == plain[2], scap.name
        assert fast[3].syscalls == plain[3].syscalls, scap.name
        # sysdig printed fewer lines: the enter halves are gone.
        assert fast[3].lines <= plain[3].lines
        compared += sum(len(b) for b in plain[0])
    if compared == 0:
        pytest.skip("no readable capture events")
    assert compared > 1_000


def test_a_large_capture_loses_its_enter_halves(scap_dir, sysdig):
    scap = scap_dir / "examples" / "example4_example4-2.scap"
    if not scap.is_file():
        pytest.skip(f"{scap} not found")
    plain = read_all(scap, filtered=False)
    fast = read_all(scap, filtered=True)
    assert fast[0] == plain[0]
    assert fast[3].lines < plain[3].lines * 0.6
