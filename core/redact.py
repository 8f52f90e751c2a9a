"""Redaction of secrets and hostile characters in command lines and paths.

Everything here came from a monitored process, so it may carry passwords in
argv, tokens in URLs, escape sequences meant for a responder's terminal, or
megabytes of padding. Alerts and log lines only ever get the output of
``clean_cmdline`` / ``clean_text``.
"""

from __future__ import annotations

import re

MAX_CMDLINE_CHARS = 1024
MASK = "***"

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+@"), rf"\g<1>{MASK}@"),
    # --password=x, --token x, -p=x style flags and KEY=VALUE environment pairs
    (re.compile(
        r"(?i)((?:--?|\b)[a-z0-9_.-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|"
        r"access[_-]?key|private[_-]?key|credential|auth)[a-z0-9_.-]*)(=|\s+)"
        r"(?!-)(\S+)"), rf"\g<1>\g<2>{MASK}"),
    # query strings: ?token=..., &key=..., &sig=...
    (re.compile(r"(?i)([?&](?:token|key|sig|signature|password|secret|access_token|"
                r"apikey|api_key|auth)=)[^&\s]+"), rf"\g<1>{MASK}"),
    # Authorization: Bearer xxx / Basic xxx
    (re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}"), rf"\g<1> {MASK}"),
    # AWS access key ids, GitHub and Slack tokens, JWTs, PEM blocks
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"), MASK),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"), MASK),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
                re.S), MASK),
    # mysql -pSECRET (password glued to the flag)
    (re.compile(r"((?:^|\s)-p)(?!\s)(\S{3,})"), rf"\g<1>{MASK}"),
)


def clean_text(text: str, max_chars: int = 256) -> str:
    """Strip control and bidi characters and cap the length of untrusted text."""
    if not isinstance(text, str):
        text = str(text)
    text = _CONTROL_RE.sub("?", text[: max_chars * 4])
    if len(text) > max_chars:
        text = text[:max_chars] + f"...[{len(text) - max_chars} more]"
    return text


def redact(text: str) -> str:
    """Mask secrets (passwords, tokens, keys, credentials in URLs) in text."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def clean_cmdline(cmdline: str, max_chars: int = MAX_CMDLINE_CHARS) -> str:
    """A command line safe to put in an alert: redacted, printable, truncated."""
    # Redact before truncating so a secret cut in half is still masked.
    return clean_text(redact(_CONTROL_RE.sub(" ", cmdline[: max_chars * 4])), max_chars)
