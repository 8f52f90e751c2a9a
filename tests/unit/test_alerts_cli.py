"""``systerns alerts``: what reaches the operator's terminal, and a dead broker."""

from __future__ import annotations

import os
import subprocess
import sys

from systerns.cli.alerts import format_alert
from systerns.cli.stack import free_port
from tests.unit.test_formats import make_alert

#: Terminal controls a forged alert could carry: clear screen, window title,
#: carriage return, bidi override.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\rname\u202egnp.exe"


def test_text_output_shows_no_terminal_control_from_a_forged_alert():
    a = make_alert()
    a["host"] = a["exe_path"] = a["cmdline"] = HOSTILE
    a["process_tree"][0]["name"] = HOSTILE

    text = format_alert(a, "text")

    assert not any(c in text for c in "\x1b\x07\r\u202e")
    assert "?[2J" in text and "name" in text
    assert text.count("\n") == format_alert(make_alert(), "text").count("\n")


def test_alerts_fails_clearly_without_a_broker(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTERNS_")}
    env["SYSTERNS_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    out = subprocess.run([sys.executable, "-m", "systerns", "alerts",
                          "--idle-timeout-s", "2"],
                         env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)

    assert out.returncode == 1
    assert "cannot read" in out.stderr
