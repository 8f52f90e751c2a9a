"""Webhook sink: alerts posted as JSON (raw, OCSF or ECS) or as Slack messages.

A ``WebhookSink`` POSTs one JSON document per alert with the standard
library's ``urllib`` (no extra dependency), retries timeouts, connection
errors, 5xx, 408, 425 and 429 with exponential backoff, and hands a
``WebhookFailure`` to a dead-letter callback once its attempts are used up
(the worker writes it to the dead-letter topic with reason
``webhook_failed``). Other 4xx answers and redirects are not retried.

Webhook URLs are credentials (a Slack incoming-webhook URL *is* its secret),
so log lines and failure details carry only ``mask_url``'s form of the URL:
scheme, host, port and a first path segment that is a plain word; user
info, the rest of the path and the query are masked. Headers and bodies are
never logged.

``send`` blocks (up to ``attempts * timeout_s`` plus backoff); from the Faust
worker call ``asend``, which runs it in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog

from systerns.core.formats import title, to_ecs, to_ocsf
from systerns.core.redact import MASK, redact

log = structlog.get_logger(__name__)

PayloadFormat = Literal["alert", "ocsf", "ecs", "slack"]
FORMATS: tuple[PayloadFormat, ...] = ("alert", "ocsf", "ecs", "slack")
DEAD_LETTER_REASON = "webhook_failed"
#: The dead-letter record's ``raw`` field holds at most this much of the body.
MAX_RAW_BYTES = 64 * 1024
#: Answers worth another try; every other 4xx means the request itself is wrong.
RETRY_STATUSES = frozenset({408, 425, 429})
_MAX_RESPONSE_BYTES = 64 * 1024
_MAX_DETAIL_CHARS = 300
_PLAIN_SEGMENT = re.compile(r"[A-Za-z][A-Za-z_-]{0,23}")
# Slack's limits on block text, in characters.
_SLACK_HEADER_CHARS = 150
_SLACK_FIELD_CHARS = 2000
_SLACK_TEXT_CHARS = 3000


def mask_url(url: str) -> str:
    """A webhook URL fit for a log line: no user info, query or path secrets.

    Only the first path segment may stay, and only when it is a plain word.

    ``https://u:p@hooks.example/services/T1/B2/xyz?token=k`` becomes
    ``https://***@hooks.example/services/***?***``.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{MASK}@" if (parts.username or parts.password) else ""
    netloc += host + (f":{port}" if port is not None else "")
    segments = [s for s in parts.path.split("/") if s]
    path = ""
    if segments:
        # A plain word (``/services``, ``/hook``) helps tell webhooks apart;
        # anything else may be the secret itself (``/<uuid>``).
        path = f"/{segments[0]}" if _PLAIN_SEGMENT.fullmatch(segments[0]) else ""
        if len(segments) > 1 or not path:
            path += f"/{MASK}"
    query = f"?{MASK}" if parts.query else ""
    return redact(f"{parts.scheme}://{netloc}{path}{query}")


@dataclass(frozen=True, slots=True)
class WebhookFailure:
    """An alert the webhook would not take after every attempt.

    Attributes:
        alert_id: the alert's id ("" for a payload without one).
        url: the webhook URL, masked.
        attempts: how many requests were made.
        detail: the last error (``http_500``, ``TimeoutError: ...``), masked.
        payload: the request body that was refused.
        reason: the dead-letter reason, always ``webhook_failed``.
    """

    alert_id: str
    url: str
    attempts: int
    detail: str
    payload: bytes
    reason: str = DEAD_LETTER_REASON

    def to_dead_letter(
        self, stage: str = "worker", now_ms: int | None = None
    ) -> dict[str, Any]:
        """A ``dead_letter`` Avro record for this failure.

        Args:
            stage: the pipeline stage that sent it.
            now_ms: the record's time in epoch milliseconds; now when None.
        """
        return {
            "stage": stage,
            "reason": self.reason,
            "detail": (
                f"alert {self.alert_id} after {self.attempts} attempts: {self.detail}"
            ),
            "source": self.url,
            "raw": self.payload[:MAX_RAW_BYTES],
            "ts_ms": int(time.time() * 1000) if now_ms is None else now_ms,
        }


def _slack_escape(text: object, max_chars: int) -> str:
    # Slack reads &, < and > as markup (links, mentions); a backtick would
    # close the code span around a command line.
    out = (
        str(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("`", "'")
    )
    return out if len(out) <= max_chars else out[: max_chars - 1] + "…"


def _utc(ns: int) -> str:
    return dt.datetime.fromtimestamp(int(ns) // 10**9, dt.UTC).strftime(
        "%Y-%m-%d %H:%M:%S"
    )


def _field(label: str, value: str) -> dict[str, str]:
    return {
        "type": "mrkdwn",
        "text": f"*{label}*\n{_slack_escape(value, _SLACK_FIELD_CHARS - 40)}",
    }


def slack_message(alert: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` plus Block Kit ``blocks``).

    Every alert field is escaped for Slack markup and cut to Slack's limits.
    """
    severity = str(alert["severity"]).upper()
    technique = f"{alert['mitre_technique']} {alert['mitre_technique_name']}"
    text = _slack_escape(
        f"[{severity}] {technique}: {alert['summary']} (host {alert['host']})",
        _SLACK_TEXT_CHARS,
    )
    parent = next(
        (
            n
            for n in alert.get("process_tree", [])[1:]
            if int(n["pid"]) == int(alert["ppid"])
        ),
        None,
    )
    container = str(alert["container_id"])
    if alert.get("container_image"):
        container += f" ({alert['container_image']})"
    fields = [
        _field("Host", str(alert["host"])),
        _field("Container", container),
        _field("Process", f"{alert['process_name']} (pid {alert['pid']})"),
        _field(
            "Parent",
            f"{parent['name'] or '?'} (pid {parent['pid']})"
            if parent
            else f"pid {alert['ppid']}",
        ),
        _field("ATT&CK", technique),
        _field(
            "Behaves like",
            f"{alert['behaves_like']} "
            f"({float(alert['behaves_like_confidence']):.0%}), "
            f"malicious p={float(alert['malicious_probability']):.2f}",
        ),
        _field(
            "Seen (UTC)",
            f"{_utc(alert['first_seen_ns'])} to {_utc(alert['last_seen_ns'])}",
        ),
        _field("Executable", str(alert["exe_path"])),
    ]
    cmdline = _slack_escape(alert["cmdline"], _SLACK_TEXT_CHARS - 40)
    context = _slack_escape(
        f"alert {alert['alert_id']} · {alert['reason']} · trigger {alert['trigger']}"
        f" · model {alert['model_name']} v{alert['model_version']}",
        _SLACK_FIELD_CHARS,
    )
    return {
        "text": text,
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _slack_escape(
                        f"{severity}: {title(alert)}", _SLACK_HEADER_CHARS
                    ),
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _slack_escape(alert["summary"], _SLACK_TEXT_CHARS),
                },
            },
            {"type": "section", "fields": fields},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Command line*\n```{cmdline}```",
                },
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def render(alert: dict[str, Any], fmt: PayloadFormat) -> dict[str, Any]:
    """The JSON document a webhook of format ``fmt`` receives for an alert.

    Raises:
        ValueError: an unknown format.
    """
    if fmt == "alert":
        return alert
    if fmt == "ocsf":
        return to_ocsf(alert)
    if fmt == "ecs":
        return to_ecs(alert)
    if fmt == "slack":
        return slack_message(alert)
    raise ValueError(f"unknown webhook format {fmt!r}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 302 on a POST as a GET without the body; a webhook
    # that redirects is misconfigured, so the 3xx surfaces as an HTTPError.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, detail: str, delay_s: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.delay_s = delay_s


class _GiveUp(Exception):
    """The webhook refused the request itself; retrying would not help."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class WebhookSink:
    """Posts alerts to one webhook URL, with retries and a dead-letter callback.

    Args:
        url: the ``http`` or ``https`` webhook URL (a secret: never logged);
            ``user:password@`` in it is sent as HTTP basic authentication.
        fmt: what to post: the ``alert`` record as is, its ``ocsf`` or ``ecs``
            form, or a ``slack`` message.
        attempts: requests per alert before giving up, at least 1.
        timeout_s: socket timeout of one request.
        backoff_s: wait after the first failed attempt; doubles each time.
        max_backoff_s: cap on one wait, also on a 429's ``Retry-After``.
        headers: extra request headers (e.g. ``Authorization``); never logged.
        on_dead_letter: called with a ``WebhookFailure`` when an alert is
            given up; without it the failure is only logged.
        trust_env: use proxies from the ``http_proxy``-style environment.
        sleep: how to wait between attempts (a fake in tests).

    Raises:
        ValueError: a URL that is not http(s), an unknown format, or fewer than
            one attempt.
    """

    def __init__(
        self,
        url: str,
        *,
        fmt: PayloadFormat = "alert",
        attempts: int = 3,
        timeout_s: float = 5.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        headers: dict[str, str] | None = None,
        on_dead_letter: Callable[[WebhookFailure], None] | None = None,
        trust_env: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"webhook URL must be http or https: {mask_url(url)}")
        if fmt not in FORMATS:
            raise ValueError(f"unknown webhook format {fmt!r}")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.masked_url = mask_url(url)
        parts = urlsplit(url)
        auth: dict[str, str] = {}
        if parts.username or parts.password:
            # urllib would take user:password@ for part of the host name; send
            # it as HTTP basic authentication and keep it out of the URL.
            user = unquote(parts.username or "")
            password = unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            auth["Authorization"] = f"Basic {token}"
            netloc = parts.netloc.rpartition("@")[2]
            url = urlunsplit(parts._replace(netloc=netloc))
        self._url = url
        self.fmt: PayloadFormat = fmt
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._headers = (
            {
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "systerns-webhook",
            }
            | auth
            | (headers or {})
        )
        self.on_dead_letter = on_dead_letter
        self._sleep = sleep
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if not trust_env:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def send(self, alert: dict[str, Any]) -> bool:
        """Post one alert in the sink's format.

        Returns:
            True when the webhook accepted it (2xx); False when it was given up
            (and handed to ``on_dead_letter``).
        """
        return self.post(
            render(alert, self.fmt), alert_id=str(alert.get("alert_id", ""))
        )

    async def asend(self, alert: dict[str, Any]) -> bool:
        """``send`` in a worker thread, for callers on an event loop."""
        return await asyncio.to_thread(self.send, alert)

    def post(self, document: dict[str, Any], *, alert_id: str = "") -> bool:
        """Post any JSON document with the sink's retries and dead-lettering.

        Args:
            document: the JSON body (e.g. an incident update).
            alert_id: the alert it concerns, for logs and the dead letter.

        Returns:
            True on a 2xx answer, False when given up.
        """
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        detail = ""
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            started = time.monotonic()
            try:
                status = self._post_once(body)
            except _GiveUp as exc:
                detail = exc.detail
                break
            except _Retry as exc:
                detail = exc.detail
                if attempt >= self.attempts:
                    break
                delay_s = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                if exc.delay_s is not None:
                    delay_s = min(self.max_backoff_s, max(delay_s, exc.delay_s))
                log.warning(
                    "webhook_retry",
                    url=self.masked_url,
                    alert_id=alert_id,
                    attempt=attempt,
                    error=detail,
                    delay_s=delay_s,
                )
                self._sleep(delay_s)
                continue
            log.info(
                "webhook_sent",
                url=self.masked_url,
                alert_id=alert_id,
                status=status,
                attempt=attempt,
                elapsed_ms=round((time.monotonic() - started) * 1000, 1),
            )
            return True

        failure = WebhookFailure(
            alert_id=alert_id,
            url=self.masked_url,
            attempts=attempt,
            detail=detail,
            payload=body,
        )
        log.error(
            "webhook_failed",
            url=self.masked_url,
            alert_id=alert_id,
            attempts=attempt,
            error=detail,
            reason=DEAD_LETTER_REASON,
        )
        if self.on_dead_letter is not None:
            self.on_dead_letter(failure)
        return False

    def _clean(self, text: str) -> str:
        return redact(text.replace(self._url, self.masked_url))[:_MAX_DETAIL_CHARS]

    def _post_once(self, body: bytes) -> int:
        # S310: __init__ admits only http and https URLs.
        request = urllib.request.Request(  # noqa: S310
            self._url, data=body, method="POST", headers=self._headers
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(_MAX_RESPONSE_BYTES)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            code = int(exc.code)
            if code >= 500 or code in RETRY_STATUSES:
                raise _Retry(
                    f"http_{code}",
                    _retry_after_s(exc.headers.get("Retry-After"))
                    if code == 429
                    else None,
                ) from None
            raise _GiveUp(f"http_{code}") from None
        except urllib.error.URLError as exc:
            raise _Retry(
                self._clean(f"{type(exc.reason).__name__}: {exc.reason}")
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets
            raise _Retry(self._clean(f"{type(exc).__name__}: {exc}")) from None
        if not 200 <= status < 300:
            raise _GiveUp(f"http_{status}")
        return status


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; None when absent or a date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
