"""The webhook sink against a local HTTP receiver on 127.0.0.1.

The receiver is ``http.server`` in a thread of this process, on a free port,
answering from a script per test; nothing leaves the loopback interface.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from structlog.testing import capture_logs

from systerns.core.verdicts import ModelAnswer, build_alert
from systerns.schemas.codec import Codec
from systerns.streams.sinks import (
    DEAD_LETTER_REASON,
    WebhookFailure,
    WebhookSink,
    mask_url,
    slack_message,
)

SECRET_PATH = "T0123/B0456/s3cr3tW3bh00kT0k3n"  # noqa: S105 - a fake, hunted in logs


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A scripted webhook: each request takes the next answer of ``script``.

    An answer is a status code, or ``("sleep", seconds, status)`` to stall
    before answering. Past the end of the script it answers 200.
    """

    url: str
    script: list = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self) -> tuple[float, int, dict[str, str]]:
        with self.lock:
            answer = self.script.pop(0) if self.script else 200
        if isinstance(answer, tuple) and answer[0] == "sleep":
            return float(answer[1]), int(answer[2]), {}
        if isinstance(answer, tuple):
            return 0.0, int(answer[0]), dict(answer[1])
        return 0.0, int(answer), {}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local receiver on a free port of 127.0.0.1, shut down after the test."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with state.lock:
                state.received.append(Received(self.path, dict(self.headers), body))
            delay_s, status, headers = state.next_answer()
            if delay_s:
                time.sleep(delay_s)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_alert(comm: str = "kworker", cmdline: str = "kworker -o pool:3333") -> dict:
    """An alert record from the real ``build_alert``."""
    session = {
        "session_id": "node-1/c1/7/1",
        "host": "node-1",
        "container_id": "c1",
        "container_image": "app:1",
        "pid": 7,
        "ppid": 1,
        "comm": comm,
        "exe": "/usr/local/bin/kworker",
        "cmdline": cmdline,
        "exec_id": "1",
        "first_ts_ns": 1_767_225_600 * 10**9,
        "last_ts_ns": 1_767_225_660 * 10**9,
        "n_events": 900,
        "failed": 0,
        "counts": {"futex": 900},
        "paths": {"sys_cpu": 3},
        "tids": [7],
        "sample_paths": [],
    }
    answer = ModelAnswer("unknown", 0.3, 0.98, 2)
    return build_alert(
        session,
        answer,
        "crypto_mining",
        "running",
        model_name="systerns",
        parent_name="sh",
        now_ms=1_767_225_661_000,
    )


def sink(url: str, **kwargs) -> tuple[WebhookSink, list[float], list[WebhookFailure]]:
    """A sink with a recording fake sleep and dead-letter list."""
    delays: list[float] = []
    dead: list[WebhookFailure] = []
    options = dict(
        attempts=3,
        timeout_s=2.0,
        backoff_s=0.5,
        on_dead_letter=dead.append,
        trust_env=False,
        sleep=delays.append,
    )
    return WebhookSink(url, **(options | kwargs)), delays, dead


def test_success_posts_the_alert_as_json(receiver):
    """One request, the alert record as the body, logged with the masked URL."""
    alert = make_alert()
    s, delays, dead = sink(receiver.url)

    with capture_logs() as logs:
        ok = s.send(alert)

    assert ok is True
    (request,) = receiver.received
    assert json.loads(request.body) == alert
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json; charset=utf-8"
    assert (delays, dead) == ([], [])
    (sent,) = logs
    assert sent["event"] == "webhook_sent"
    assert (sent["status"], sent["attempt"], sent["alert_id"]) == (
        200,
        1,
        alert["alert_id"],
    )
    assert sent["url"] == receiver.url  # one path segment: nothing to mask


def test_a_500_is_retried_after_a_backoff(receiver):
    """500 then 200: two requests, one wait of the first backoff."""
    receiver.script = [500, 200]
    s, delays, dead = sink(receiver.url)

    with capture_logs() as logs:
        ok = s.send(make_alert())

    assert ok is True
    assert len(receiver.received) == 2
    assert delays == [0.5]
    assert dead == []
    assert [e["event"] for e in logs] == ["webhook_retry", "webhook_sent"]
    assert logs[0]["error"] == "http_500"


def test_always_500_goes_to_the_dead_letters_after_n_attempts(receiver):
    """Every attempt used, waits doubling, then one dead letter with the body."""
    receiver.script = [500] * 4
    s, delays, dead = sink(receiver.url, attempts=4)
    alert = make_alert()

    with capture_logs() as logs:
        ok = s.send(alert)

    assert ok is False
    assert len(receiver.received) == 4
    assert delays == [0.5, 1.0, 2.0]
    (failure,) = dead
    assert (failure.reason, failure.attempts, failure.detail) == (
        DEAD_LETTER_REASON,
        4,
        "http_500",
    )
    assert json.loads(failure.payload) == alert
    assert logs[-1]["event"] == "webhook_failed"
    assert logs[-1]["log_level"] == "error"

    record = failure.to_dead_letter(now_ms=5)
    assert Codec("dead_letter").decode(Codec("dead_letter").encode(record)) == record
    assert (record["reason"], record["stage"], record["source"]) == (
        "webhook_failed",
        "worker",
        receiver.url,
    )


def test_backoff_is_capped(receiver):
    """No single wait exceeds max_backoff_s."""
    receiver.script = [503] * 6
    s, delays, _ = sink(receiver.url, attempts=6, backoff_s=1.0, max_backoff_s=3.0)

    assert s.send(make_alert()) is False
    assert delays == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_timeout_is_retried(receiver):
    """A receiver that stalls past timeout_s gets a second request."""
    receiver.script = [("sleep", 1.5, 200), 200]
    s, delays, dead = sink(receiver.url, timeout_s=0.3)

    with capture_logs() as logs:
        started = time.monotonic()
        ok = s.send(make_alert())
        elapsed_s = time.monotonic() - started

    assert ok is True
    assert len(receiver.received) == 2
    assert delays == [0.5]
    assert dead == []
    assert "timed out" in logs[0]["error"].lower()
    assert elapsed_s < 1.4  # did not wait for the stalled answer


def test_a_refused_connection_is_retried_then_dead_lettered():
    """Nothing listening: every attempt fails to connect, then a dead letter."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s, delays, dead = sink(f"http://127.0.0.1:{port}/hook", attempts=2)

    assert s.send(make_alert()) is False
    assert delays == [0.5]
    (failure,) = dead
    assert "ConnectionRefusedError" in failure.detail


@pytest.mark.parametrize("status", [400, 401, 403, 404, 302])
def test_client_errors_and_redirects_are_not_retried(receiver, status):
    """The request itself is wrong: one attempt, straight to the dead letters."""
    receiver.script = [(status, {"Location": "/elsewhere"})]
    s, delays, dead = sink(receiver.url)

    assert s.send(make_alert()) is False
    assert len(receiver.received) == 1
    assert delays == []
    assert [(f.attempts, f.detail) for f in dead] == [(1, f"http_{status}")]


def test_429_waits_for_retry_after(receiver):
    """Too Many Requests: the wait is the server's Retry-After, within the cap."""
    receiver.script = [(429, {"Retry-After": "4"}), 200]
    s, delays, _ = sink(receiver.url, max_backoff_s=10.0)

    assert s.send(make_alert()) is True
    assert delays == [4.0]


def test_secrets_in_the_url_never_reach_logs_or_dead_letters(receiver):
    """User info, the path past its first segment and the query are masked."""
    host = receiver.url.removesuffix("/hook").removeprefix("http://")
    url = f"http://alice:pa55w0rd@{host}/services/{SECRET_PATH}?token=t0k3n"
    receiver.script = [500, 500]
    s, _, dead = sink(url, attempts=2, headers={"X-Api-Key": "k3yv4lu3"})

    with capture_logs() as logs:
        s.send(make_alert())

    text = repr(logs) + repr(dead[0].to_dead_letter(now_ms=0)) + repr(dead[0])
    for secret in ("alice", "pa55w0rd", "s3cr3t", "B0456", "t0k3n", "k3yv4lu3"):
        assert secret not in text
    assert logs[0]["url"] == f"http://***@{host}/services/***?***"
    request = receiver.received[0]
    assert request.path == f"/services/{SECRET_PATH}?token=t0k3n"
    expected = base64.b64encode(b"alice:pa55w0rd").decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["X-Api-Key"] == "k3yv4lu3"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "https://hooks.example/services/T1/B2/xyz",
            "https://hooks.example/services/***",
        ),
        ("https://u:p@h.example:8443/a?sig=1&x=2", "https://***@h.example:8443/a?***"),
        ("http://127.0.0.1:9000/hook", "http://127.0.0.1:9000/hook"),
        ("http://[::1]:9000/", "http://[::1]:9000"),
        ("http://h.example", "http://h.example"),
        ("http://h.example:notaport/x", "***"),
        (
            "https://hook.example/0b7e4c1a-9f1e-4d2b-8c3e-5a6f7d8e9f00",
            "https://hook.example/***",
        ),
        ("https://hook.example/api2/x", "https://hook.example/***"),
    ],
)
def test_mask_url(url, masked):
    """Scheme, host, port and a plain first path segment survive; nothing else."""
    assert masked == mask_url(url)


def test_slack_format_content(receiver):
    """A Slack message: fallback text, header, fields, command line, context."""
    alert = make_alert(comm="<!channel>&`x`", cmdline="run `rm -rf /` --token=abc")
    s, _, _ = sink(receiver.url, fmt="slack")

    assert s.send(alert) is True

    message = json.loads(receiver.received[0].body)
    assert message == slack_message(alert)
    assert set(message) == {"text", "blocks"}
    assert message["text"].startswith("[CRITICAL] T1496 Resource Hijacking:")
    header, summary, facts, command, context = message["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "CRITICAL: Crypto-mining process"},
    }
    assert summary["type"] == "section" and summary["text"]["type"] == "mrkdwn"
    labels = [f["text"].split("\n", 1)[0] for f in facts["fields"]]
    assert labels == [
        "*Host*",
        "*Container*",
        "*Process*",
        "*Parent*",
        "*ATT&CK*",
        "*Behaves like*",
        "*Seen (UTC)*",
        "*Executable*",
    ]
    assert len(facts["fields"]) <= 10
    assert "*Host*\nnode-1" in facts["fields"][0]["text"]
    assert "app:1" in facts["fields"][1]["text"]
    assert "sh (pid 1)" in facts["fields"][3]["text"]
    assert "2026-01-01 00:00:00 to 2026-01-01 00:01:00" in facts["fields"][6]["text"]
    assert command["text"]["text"] == "*Command line*\n```run 'rm -rf /' --token=***```"
    assert alert["alert_id"] in context["elements"][0]["text"]
    # Hostile markup is inert: no mention, no broken code span.
    body = receiver.received[0].body.decode()
    assert "<!channel>" not in body
    assert "&lt;!channel&gt;&amp;'x'" in message["blocks"][2]["fields"][2]["text"]


def test_slack_texts_stay_within_slack_limits():
    """Header text at most 150 characters, fields 2000, sections 3000."""
    alert = make_alert(comm="k" * 64, cmdline="x" * 5000)
    alert["summary"] = "s" * 5000
    alert["exe_path"] = "/e" * 2000

    message = slack_message(alert)

    header, summary, facts, command, _ = message["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert len(summary["text"]["text"]) <= 3000
    assert len(command["text"]["text"]) <= 3000
    assert all(len(f["text"]) <= 2000 for f in facts["fields"])
    assert len(message["text"]) <= 3000


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("ocsf", lambda d: d["class_uid"] == 2004),
        ("ecs", lambda d: d["event"]["kind"] == "alert"),
    ],
)
def test_ocsf_and_ecs_formats(receiver, fmt, check):
    """The sink posts the mapped document of its format."""
    s, _, _ = sink(receiver.url, fmt=fmt)

    assert s.send(make_alert()) is True
    assert check(json.loads(receiver.received[0].body))


def test_asend_runs_off_the_event_loop(receiver):
    """asend posts from a worker thread and returns the outcome."""
    s, _, _ = sink(receiver.url)

    assert asyncio.run(s.asend(make_alert())) is True
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("file:///etc/passwd", {}),
        ("ftp://h.example/x", {}),
        ("http://h.example/x", {"fmt": "xml"}),
        ("http://h.example/x", {"attempts": 0}),
    ],
)
def test_bad_configuration_is_refused(url, kwargs):
    """Only http(s), known formats and at least one attempt."""
    with pytest.raises(ValueError):
        WebhookSink(url, **kwargs)
