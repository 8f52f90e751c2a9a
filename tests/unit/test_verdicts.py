"""Verdicts, alerts and redaction of hostile fields."""

from __future__ import annotations

import pytest

from systerns.core.redact import clean_cmdline, clean_text
from systerns.core.verdicts import (
    ModelAnswer,
    VerdictPolicy,
    alert_id,
    build_alert,
    names_match,
    reasons_for,
)
from systerns.schemas.codec import Codec


def session(comm="kworker", exe="/tmp/kworker", cmdline="kworker", n=500):
    return {"session_id": "h/c/7/123", "host": "h", "container_id": "c",
            "container_image": "img", "pid": 7, "ppid": 1, "comm": comm, "exe": exe,
            "cmdline": cmdline, "exec_id": "123", "first_ts_ns": 10**18,
            "last_ts_ns": 10**18 + 5 * 10**9, "n_events": n, "failed": 0,
            "counts": {"execve": 1, "read": n - 11, "sched_setaffinity": 10},
            "paths": {"sys_cpu": 4},
            "tids": [7, 8], "sample_paths": ["/sys/devices/system/cpu/online"]}


@pytest.mark.parametrize(("seen", "like", "ok"), [
    ("sha256sum", "sha256sum", True),
    ("kworker", "sha256sum", False),
    ("python3.11", "python3", True),
    ("gunzip", "gzip", True),
    ("/usr/bin/gzip", "gzip", True),
    ("nginx", "gzip", False),
    ("dash", "sh", True),
    # A prefix is no honest name: a masquerade would pick one.
    ("f", "find", False),
    ("findutil", "find", False),
    ("sha256", "sha256sum", False),
    # ... except the kernel's 15-character cut of a longer name.
    ("systemd-journal", "systemd-journald", True),
])
def test_names_match(seen, like, ok):
    assert names_match(seen, like) is ok


def test_miner_probability_raises_crypto_mining():
    ans = ModelAnswer("unknown", 0.5, 0.97, 1)
    assert reasons_for(session(), ans, VerdictPolicy()) == ["crypto_mining"]


def test_renamed_binary_raises_masquerading_but_honest_name_does_not():
    ans = ModelAnswer("sha256sum", 0.99, 0.01, 1)
    assert reasons_for(session(), ans, VerdictPolicy()) == ["masquerading"]
    honest = session(comm="sha256sum", exe="/usr/bin/sha256sum")
    assert reasons_for(honest, ans, VerdictPolicy()) == []


def test_low_confidence_or_short_sessions_never_claim_masquerading():
    assert reasons_for(session(), ModelAnswer("ls", 0.6, 0.0, 1), VerdictPolicy()) == []
    assert reasons_for(session(n=50), ModelAnswer("ls", 0.99, 0.0, 1),
                       VerdictPolicy()) == []
    assert reasons_for(session(), ModelAnswer("unknown", 0.99, 0.0, 1),
                       VerdictPolicy()) == []


def test_alert_ids_are_deterministic_and_distinct():
    a = alert_id("h/c/7/1", "crypto_mining", "systerns", 1)
    assert a == alert_id("h/c/7/1", "crypto_mining", "systerns", 1)
    assert a != alert_id("h/c/7/2", "crypto_mining", "systerns", 1)
    assert a != alert_id("h/c/7/1", "masquerading", "systerns", 1)


def test_alert_has_the_evidence_and_fits_the_schema():
    s = session(cmdline="kworker --pass=hunter2 -o stratum+tcp://u:pw@pool:3333")
    a = build_alert(s, ModelAnswer("xmrig", 0.9, 0.99, 3, (("xmrig", 0.9),)),
                    "crypto_mining", "running", model_name="systerns", parent_name="bash")
    assert a["mitre_technique"] == "T1496"
    assert a["process_tree"] == [{"pid": 7, "name": "kworker"}, {"pid": 1, "name": "bash"}]
    assert "hunter2" not in a["cmdline"] and ":pw@" not in a["cmdline"]
    assert a["evidence"]["top_syscalls"][0] == {"name": "read", "count": 489}
    codec = Codec("alert")
    assert codec.decode(codec.encode(a)) == a


@pytest.mark.parametrize("secret_line", [
    "mysql -u root -pS3cretPass db",
    "curl https://bob:S3cretPass@example.com/",
    "app --password S3cretPass",
    "app --api-key=S3cretPass",
    "env DB_PASSWORD=S3cretPass ./run",
    "curl -H 'Authorization: Bearer S3cretPassS3cretPass'",
    "wget 'https://x.example/a?token=S3cretPass&b=1'",
])
def test_secrets_in_argv_are_redacted(secret_line):
    assert "S3cretPass" not in clean_cmdline(secret_line)


def test_hostile_text_is_cleaned_and_capped():
    out = clean_text("evil\x1b[31m\u202e\x00name" + "A" * 10_000, 64)
    assert "\x1b" not in out and "\u202e" not in out and "\x00" not in out
    assert len(out) < 100
    assert len(clean_cmdline("x " * 100_000)) < 1100


def test_masquerading_needs_the_image_start_unless_the_policy_says_otherwise():
    ans = ModelAnswer("sha256sum", 0.99, 0.01, 1)
    midlife = session()
    midlife["counts"] = {"read": 490, "sched_setaffinity": 10}  # no execve seen
    assert reasons_for(midlife, ans, VerdictPolicy()) == []
    assert reasons_for(midlife, ans, VerdictPolicy(masquerade_needs_exec=False)) == [
        "masquerading"]
    assert reasons_for(session(), ans, VerdictPolicy()) == ["masquerading"]
