"""Offline scan: the worker's core over a real capture, without Kafka."""

from __future__ import annotations

import pytest

from systerns.cli.scan import DEFAULT_MODEL_DIR, scan_file
from systerns.core.detector import Detector


@pytest.fixture(scope="module")
def detector():
    if not DEFAULT_MODEL_DIR.is_dir():
        pytest.fail("no exported model under models/systerns")
    from systerns.serving.client import LocalModel

    return Detector(LocalModel(DEFAULT_MODEL_DIR, version=1))


def test_scan_of_a_real_capture_judges_every_session(detector, scap_dir, sysdig):
    outcomes, counts = scan_file(scap_dir / "falco" / "psp_run_as_user_0_container.scap",
                                 detector, host="scan")
    assert counts["events"] == 1344
    assert counts["sessions"] == len([o for o in outcomes if o.verdict["final"]]) >= 10
    assert counts["alerts"] == 0
    names = {o.verdict["process_name"] for o in outcomes}
    assert {"bash", "ls", "sshd"} <= names
    assert all(0.0 <= o.verdict["malicious_probability"] <= 1.0 for o in outcomes)


def test_scan_of_a_recorded_renamed_command_flags_masquerading(detector, tmp_path):
    import shutil

    from systerns.producers.trace import record

    fake = tmp_path / "kworker"
    shutil.copy2(shutil.which("find"), fake)
    trace = tmp_path / "t.strace"
    record([str(fake), "/usr/share/doc", "-name", "*.gz"], trace)
    outcomes, counts = scan_file(trace, detector, host="scan")
    reasons = {(a["process_name"], a["reason"], a["behaves_like"])
               for o in outcomes for a in o.alerts}
    assert ("kworker", "masquerading", "find") in reasons


@pytest.mark.parametrize("args", [["/"], ["--threshold", "5", __file__],
                                  ["--threshold", "0", __file__]])
def test_scan_refuses_bad_arguments_as_usage_errors(args, capsys):
    from systerns.cli.scan import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "systerns scan: error:" in capsys.readouterr().err


def test_a_bad_setting_is_a_usage_error_not_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTERNS_")}
    env["SYSTERNS_IDLE_S"] = "abc"
    out = subprocess.run([sys.executable, "-m", "systerns", "alerts"], env=env,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert "SYSTERNS_IDLE_S='abc' is not a float" in out.stderr
    assert "Traceback" not in out.stderr
