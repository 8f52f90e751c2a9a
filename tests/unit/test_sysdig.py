"""The sysdig reader on real captures and on hostile lines."""

from __future__ import annotations

import orjson
import pytest

from systerns.core.errors import ParseError, SourceError, UnknownEventError
from systerns.producers.sysdig import ReadStats, parse_line, read_capture, read_lines

GOOD = {"evt.type": "open", "evt.dir": "<", "evt.rawtime": 1, "evt.rawres": 3,
        "proc.pid": 5, "thread.tid": 5, "proc.ppid": 1, "proc.name": "cat",
        "proc.exe": "cat", "proc.exepath": "/bin/cat", "proc.cmdline": "cat f",
        "container.id": "host", "container.image": None, "fd.name": "/etc/passwd",
        "evt.args": ""}


def line(**kw) -> bytes:
    return orjson.dumps(GOOD | kw)


def test_a_good_line_parses():
    info, ev = parse_line(line(), "h")
    assert (info.pid, info.comm, info.exe, info.container_id) == (5, "cat", "/bin/cat",
                                                                  "host")
    assert (ev.name, ev.res, ev.arg) == ("open", 3, "/etc/passwd")


def test_enter_halves_and_context_switches_are_skipped():
    assert parse_line(line(**{"evt.dir": ">"}), "h") is None
    assert parse_line(line(**{"evt.type": "switch"}), "h") is None
    assert parse_line(line(**{"evt.type": "procexit", "evt.dir": ">"}), "h")[1].name == "exit"


@pytest.mark.parametrize(("raw", "err", "reason"), [
    (b'{"evt.type": "open", "evt.dir": "<", "evt', ParseError, "not_json"),
    (b"[1, 2]", ParseError, "not_object"),
    (b'{"evt.dir": "<"}', UnknownEventError, "unknown_event"),
    (line(**{"evt.type": "Open Sesame;"}), UnknownEventError, "unknown_event"),
    (line(**{"proc.pid": "5"}), ParseError, "bad_field"),
    (line(**{"evt.rawtime": None}), ParseError, "bad_field"),
    (b"\xff\xfe\x00garbage", ParseError, "not_json"),
])
def test_bad_lines_raise_input_errors(raw, err, reason):
    with pytest.raises(err) as exc:
        parse_line(raw, "h")
    assert exc.value.reason == reason


def test_read_lines_reports_bad_lines_and_keeps_going():
    stats = ReadStats()
    items = list(read_lines([line(), b"not json", line(**{"evt.rawtime": 2})], "h", stats))
    assert stats.bad == 1 and stats.syscalls == 2
    assert [type(i).__name__ for i in items] == ["ParseError", "EventBatch"]
    assert len(items[1]) == 2


def test_hostile_strings_are_capped():
    info, _ = parse_line(line(**{"proc.cmdline": "A" * 100_000}), "h")
    assert len(info.cmdline) <= 4096


def test_real_capture_reads_into_batches(sysdig, scap_dir):
    stats = ReadStats()
    batches = list(read_capture(scap_dir / "falco" / "psp_run_as_user_0_container.scap",
                                "h", stats))
    assert stats.bad == 0
    # sysdig prints 3,796 lines; its filter leaves out the 2,452 enter halves.
    assert stats.lines == 1344
    assert sum(len(b) for b in batches) == stats.syscalls > 1000
    comms = {b.process.comm for b in batches}
    assert {"bash", "ls", "sshd"} <= comms
    containers = {b.process.container_id for b in batches if b.process.comm == "ls"}
    assert containers == {"697956520d89"}


def test_truncated_capture_is_a_clear_source_error(sysdig, scap_dir):
    with pytest.raises(SourceError, match="truncated|could not read"):
        list(read_capture(scap_dir / "libs" / "curl_google_comments.scap", "h"))


def test_core_imports_no_kafka_or_faust():
    import subprocess
    import sys

    code = ("import sys, systerns.core.detector, systerns.core.sessions, "
            "systerns.core.features, systerns.core.verdicts;"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('confluent_kafka', 'faust', 'aiokafka')]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_live_capture_without_a_driver_fails_clearly(monkeypatch, tmp_path):
    from systerns.core.errors import DriverMissingError
    from systerns.producers import sysdig as mod

    monkeypatch.delenv("SYSDIG_BPF_PROBE", raising=False)
    monkeypatch.setattr(mod, "Path", lambda p: tmp_path / p.lstrip("/"))
    with pytest.raises(DriverMissingError, match="kernel driver"):
        mod.check_live_driver()


def test_exit_events_are_stamped_when_the_call_started():
    """strace stamps a call at its start; sysdig's exit half steps back by its latency."""
    _, ev = parse_line(line(**{"evt.rawtime": 10_000_000_000,
                               "evt.latency": 250_000_000}), "h")
    assert ev.ts_ns == 9_750_000_000
    # Missing, zero, negative, longer than the clock or than an hour: exit time kept.
    for bad in (None, 0, -5, 20_000_000_000, 3601 * 10**9):
        _, ev = parse_line(line(**{"evt.rawtime": 10_000_000_000,
                                   "evt.latency": bad}), "h")
        assert ev.ts_ns == 10_000_000_000, bad
    with pytest.raises(ParseError):
        parse_line(line(**{"evt.latency": "soon"}), "h")


def test_a_daemon_blocked_in_waits_does_not_look_like_computing(sysdig, scap_dir):
    """dockerd in a real capture spends its time blocked in futex/epoll_wait.

    Stamped at the exit of each call, the time blocked would land after the call
    before the wait and read as computing (7.7 of 11.4 s); stamped at the start,
    as strace does, it stays after the wait.
    """
    from systerns.core.sessions import Sessionizer

    sz = Sessionizer({})
    judged = []
    for b in read_capture(scap_dir / "examples" / "example4_example4-1.scap", "h"):
        judged += sz.ingest(b)
    judged += sz.flush()
    (dockerd,) = [j.session for j in judged if j.final and j.session["comm"] == "dockerd"]
    gap_ns = dockerd["gap_ns"]
    assert gap_ns["b"] > 5e9
    assert gap_ns.get("c", 0) < 0.01 * gap_ns["b"]
