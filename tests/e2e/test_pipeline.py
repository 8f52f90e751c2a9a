"""End to end: real capture + recorded renamed miner → Kafka → worker → alerts."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from systerns.cli.stack import REPO, LocalStack, miner_argv, miner_binary
from systerns.core.settings import Settings
from systerns.producers.publisher import Publisher
from systerns.producers.sysdig import ReadStats, read_capture
from systerns.schemas.codec import Codec
from systerns.serving.export import list_versions
from tests.conftest import consume_all

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL_DIR = REPO / "models" / "systerns"
NORMAL_CAPTURES = ["falco/psp_run_as_user_0_container.scap", "libs/curl_google.scap",
                   "examples/example4_example4-1.scap", "examples/example5_nginx.scap"]


@pytest.fixture(scope="module")
def miner_copy(tmp_path_factory) -> Path:
    try:
        src = miner_binary()
    except Exception as exc:  # noqa: BLE001 - no miner here means no e2e
        pytest.skip(f"miner not available: {exc}")
    dst = tmp_path_factory.mktemp("bin") / "kworker"
    shutil.copy2(src, dst)
    return dst


class _Receiver(BaseHTTPRequestHandler):
    """A SIEM stand-in: keeps every JSON document posted to it."""

    received: list = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server interface
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_renamed_miner_alerts_and_normal_captures_do_not(broker, scap_dir, sysdig,
                                                         miner_copy, tmp_path):
    if not (MODEL_DIR / "1").is_dir():
        pytest.fail("no exported model under models/systerns")
    siem = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=siem.serve_forever, daemon=True).start()
    stack = LocalStack(bootstrap=broker, idle_s=3.0, extra_env={
        "SYSTERNS_WEBHOOK_URL": f"http://127.0.0.1:{siem.server_port}/hook",
        "SYSTERNS_WEBHOOK_FORMAT": "ocsf"})
    try:
        stack.start()
        settings = Settings.from_env(stack.env(), host="e2e-node")
        pub = Publisher(settings)
        read = ReadStats()
        for rel in NORMAL_CAPTURES:
            pub.publish(read_capture(scap_dir / rel, "capture-node", read), source=rel)

        from systerns.producers.trace import trace_command

        from systerns.lab.miner import hugepages_restored

        with hugepages_restored():
            pub.publish(trace_command(
                miner_argv(miner_copy), host="e2e-node", out_dir=tmp_path,
                netns=True, timeout_s=15), source="miner")
        stats = pub.close()
        assert stats.delivery_errors == 0
        assert stats.events_delivered == stats.events_sent > 1000

        codec = Codec("alert")
        deadline = time.monotonic() + 150
        alerts: list[dict] = []
        while time.monotonic() < deadline:
            msgs = consume_all(broker, stack.topics["alerts"], timeout_s=5, idle_s=2)
            alerts = [codec.decode(m.value()) for m in msgs]
            if any(a["host"] == "e2e-node" for a in alerts):
                break
        time.sleep(stack.idle_s + 4)
        alerts = [codec.decode(m.value()) for m in consume_all(
            broker, stack.topics["alerts"], timeout_s=10, idle_s=3)]
        verdicts = [Codec("verdict").decode(m.value()) for m in consume_all(
            broker, stack.topics["verdicts"], timeout_s=15, idle_s=3)]
    finally:
        stack.stop()
        siem.shutdown()

    miner_alerts = [a for a in alerts if a["host"] == "e2e-node"
                    and a["process_name"] == "kworker"]
    miner_verdicts = [(v["process_name"], v["trigger"], round(v["malicious_probability"], 3))
                      for v in verdicts if v["host"] == "e2e-node"]
    assert miner_alerts, f"no alert for the renamed miner; verdicts: {miner_verdicts}"
    a = miner_alerts[0]
    assert a["reason"] == "crypto_mining"
    assert a["mitre_technique"] == "T1496"
    assert a["malicious_probability"] >= 0.9
    assert a["evidence"]["n_events"] > 0 and a["evidence"]["top_syscalls"]
    # The server serves the newest exported version; the alert must come from it.
    assert a["model_version"] == max(list_versions(REPO / "models", "systerns"))
    assert a["alert_id"].startswith("sys-")
    capture_alerts = [x for x in alerts if x["host"] == "capture-node"]
    assert capture_alerts == [], [(x["process_name"], x["reason"]) for x in capture_alerts]
    assert len({x["alert_id"] for x in alerts}) == len(alerts), "duplicate alert ids"
    capture_sessions = {v["session_id"] for v in verdicts if v["host"] == "capture-node"}
    assert len(capture_sessions) >= 10
    # The SIEM webhook got the same detection as an OCSF Detection Finding.
    findings = [d for d in _Receiver.received if d.get("class_uid") == 2004]
    assert a["alert_id"] in {f["finding_info"]["uid"] for f in findings}
    assert a["incident_id"]
