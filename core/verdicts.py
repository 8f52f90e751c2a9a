"""From a model's answer on a session to a verdict and, when warranted, alerts.

Two reasons raise an alert:

* ``crypto_mining`` (ATT&CK T1496, resource hijacking): the malicious
  probability passes ``malicious_threshold``.
* ``masquerading`` (ATT&CK T1036): the process behaves, with high confidence,
  like a known command other than the one its name claims.

Alert ids are deterministic (session, reason, model), so a session judged
again while it runs, or a worker replaying after a crash, yields the same id
and consumers can de-duplicate.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass

from systerns.core.features import cpu_summary
from systerns.core.redact import clean_cmdline, clean_text

MITRE = {
    "crypto_mining": ("T1496", "Resource Hijacking", "critical"),
    "masquerading": ("T1036", "Masquerading", "high"),
}

#: Names that the same program legitimately goes by.
ALIASES: dict[str, frozenset[str]] = {
    "gzip": frozenset({"gunzip", "zcat", "gzip"}),
    "bzip2": frozenset({"bunzip2", "bzcat", "bzip2"}),
    "xz": frozenset({"unxz", "xzcat", "xz", "lzma"}),
    "python3": frozenset({"python", "python3"}),
    "bash": frozenset({"bash", "sh", "dash", "rbash"}),
    "sh": frozenset({"bash", "sh", "dash"}),
    "awk": frozenset({"awk", "gawk", "mawk", "nawk"}),
    "grep": frozenset({"grep", "egrep", "fgrep"}),
    "md5sum": frozenset({"md5sum", "sha1sum", "sha256sum", "sha512sum", "b2sum"}),
    "sha1sum": frozenset({"md5sum", "sha1sum", "sha256sum", "sha512sum", "b2sum"}),
    "sha256sum": frozenset({"md5sum", "sha1sum", "sha256sum", "sha512sum", "b2sum"}),
}
#: Linux's TASK_COMM_LEN: process names are cut to 15 characters plus NUL.
COMM_LEN = 16
_VERSION_SUFFIX = re.compile(r"[-_.]?\d+(\.\d+)*$")


@dataclass(frozen=True, slots=True)
class VerdictPolicy:
    """Thresholds that turn model outputs into alerts.

    Attributes:
        malicious_threshold: probability at or above which a session is mining.
        masquerade_confidence: confidence needed to say what a process really is.
        masquerade_min_events: fewer syscalls than this never claim masquerading.
        masquerade_needs_exec: claim masquerading only for a session that holds
            its image's ``execve``: what a program does from its start says
            which program it is; a daemon met mid-life (started before the
            collector, or before a capture began) shows only its steady state,
            where servers of every kind look alike (a ``mysqld`` read mid-life
            looks like the lab's Python service). Such sessions are still
            judged for mining.
    """

    malicious_threshold: float = 0.9
    masquerade_confidence: float = 0.95
    masquerade_min_events: int = 200
    masquerade_needs_exec: bool = True


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    """What the model said about one session (any model client returns these)."""

    behaves_like: str
    confidence: float
    malicious: float
    model_version: int
    top3: tuple[tuple[str, float], ...] = ()


def normalize_name(name: str) -> str:
    """A process name as a command name: basename, no version suffix."""
    base = name.rsplit("/", 1)[-1].strip().lower()
    stripped = _VERSION_SUFFIX.sub("", base)
    return stripped or base


def names_match(seen: str, behaves_like: str) -> bool:
    """Whether a seen process name is an honest name for the predicted command."""
    s = normalize_name(seen)
    b = normalize_name(behaves_like)
    if not s or s == b:
        return True
    # The kernel keeps only COMM_LEN - 1 characters of a name: a name cut there
    # is honest if it begins the command's. Any other prefix ("f", "findutil"
    # for find) is a rename, or a masquerade could pick one to hide behind.
    base = seen.rsplit("/", 1)[-1].strip().lower()
    if len(base) >= COMM_LEN - 1 and b.startswith(base):
        return True
    return s in ALIASES.get(b, frozenset())


def alert_id(session_id: str, reason: str, model_name: str, model_version: int) -> str:
    """Deterministic alert id: the same detection always gets the same id."""
    digest = hashlib.sha256(
        f"{session_id}|{reason}|{model_name}|{model_version}".encode()
    ).hexdigest()
    return f"sys-{digest[:32]}"


def _family_confidence(answer: ModelAnswer) -> float:
    """Probability of the predicted command plus its aliases among the top 3.

    Programs that go by each other's names (the checksum tools) make the same
    system calls, so the model spreads its probability over them; the sum is
    its confidence that the process is one of that family.
    """
    family = {normalize_name(answer.behaves_like)}
    family |= ALIASES.get(answer.behaves_like, frozenset())
    for key, names in ALIASES.items():
        if answer.behaves_like in names:
            family |= names | {key}
    extra = sum(
        p
        for name, p in answer.top3
        if name != answer.behaves_like and normalize_name(name) in family
    )
    return answer.confidence + extra


def reasons_for(session: dict, answer: ModelAnswer, policy: VerdictPolicy) -> list[str]:
    """The alert reasons a model answer supports for this session.

    Masquerading needs the confidence of the predicted command's alias family
    (``_family_confidence``), not of one member, to reach the policy's level.
    """
    out = []
    if answer.malicious >= policy.malicious_threshold:
        out.append("crypto_mining")
    elif (
        answer.behaves_like != "unknown"
        and _family_confidence(answer) >= policy.masquerade_confidence
        and session["n_events"] >= policy.masquerade_min_events
        and (not policy.masquerade_needs_exec
             or session["counts"].get("execve", 0) > 0)
        and not names_match(session["comm"], answer.behaves_like)
        and not names_match(session["exe"], answer.behaves_like)
    ):
        out.append("masquerading")
    return out


def _top_syscalls(session: dict, n: int = 8) -> list[dict]:
    items = sorted(session["counts"].items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"name": k, "count": int(v)} for k, v in items]


def _cpu_tags(session: dict) -> list[str]:
    """CPU evidence from the collector's readings, as tags (none without them)."""
    got = cpu_summary(session)
    if got is None:
        return []
    cores, cpu_s, _, busy_threads, silent_share = got
    return [f"cpu_cores:{cores:.2f}", f"cpu_seconds:{cpu_s:.1f}",
            f"cpu_busy_threads:{busy_threads}", f"cpu_silent_share:{silent_share:.2f}"]


def build_alert(
    session: dict,
    answer: ModelAnswer,
    reason: str,
    trigger: str,
    *,
    model_name: str,
    parent_name: str = "",
    now_ms: int | None = None,
) -> dict:
    """An ``alert`` Avro record with the evidence a responder needs."""
    technique, technique_name, severity = MITRE[reason]
    seen = clean_text(session["comm"], 64)
    if reason == "crypto_mining":
        summary = (f"process '{seen}' behaves like a crypto-miner "
                   f"(p={answer.malicious:.2f})")
    else:
        summary = (f"process '{seen}' behaves like '{answer.behaves_like}' "
                   f"({answer.confidence:.0%}), not like its name")
    tree = [{"pid": int(session["pid"]), "name": seen}]
    if session.get("ppid"):
        tree.append({"pid": int(session["ppid"]), "name": clean_text(parent_name, 64)})
    duration_s = (session["last_ts_ns"] - session["first_ts_ns"]) / 1e9
    return {
        "alert_id": alert_id(session["session_id"], reason, model_name,
                             answer.model_version),
        "schema_version": 2,
        "created_ms": int(time.time() * 1000) if now_ms is None else now_ms,
        "reason": reason,
        "summary": summary,
        "severity": severity,
        "mitre_technique": technique,
        "mitre_technique_name": technique_name,
        "host": clean_text(session["host"], 128),
        "container_id": clean_text(session["container_id"], 128),
        "container_image": clean_text(session.get("container_image", ""), 256),
        "pid": int(session["pid"]),
        "ppid": int(session.get("ppid", 0)),
        "process_name": seen,
        "exe_path": clean_text(session["exe"], 512),
        "cmdline": clean_cmdline(session["cmdline"]),
        "process_tree": tree,
        "behaves_like": answer.behaves_like,
        "behaves_like_confidence": float(answer.confidence),
        "malicious_probability": float(answer.malicious),
        "first_seen_ns": int(session["first_ts_ns"]),
        "last_seen_ns": int(session["last_ts_ns"]),
        "session_id": clean_text(session["session_id"], 512),
        "trigger": trigger,
        "evidence": {
            "n_events": int(session["n_events"]),
            "n_threads": len(session["tids"]),
            "duration_s": float(duration_s),
            "top_syscalls": _top_syscalls(session),
            "path_classes": {k: int(v) for k, v in sorted(session["paths"].items())},
            "sample_paths": [clean_cmdline(p, 200) for p in session["sample_paths"]],
            "top_alternatives": [
                {"name": n, "probability": float(p)} for n, p in answer.top3
            ],
        },
        "model_name": model_name,
        "model_version": int(answer.model_version),
        "incident_id": "",
        "tags": [f"source:{session.get('source', 'unknown')}", *_cpu_tags(session)],
    }


def build_verdict(
    session: dict, answer: ModelAnswer, trigger: str, final: bool,
    model_name: str, alert_ids: list[str],
) -> dict:
    """A ``verdict`` Avro record for one judgement."""
    return {
        "session_id": clean_text(session["session_id"], 512),
        "host": clean_text(session["host"], 128),
        "container_id": clean_text(session["container_id"], 128),
        "pid": int(session["pid"]),
        "exec_id": session["exec_id"],
        "process_name": clean_text(session["comm"], 64),
        "behaves_like": answer.behaves_like,
        "confidence": float(answer.confidence),
        "malicious_probability": float(answer.malicious),
        "trigger": trigger,
        "final": final,
        "evicted": bool(session.get("evicted", False)),
        "n_events": int(session["n_events"]),
        "first_seen_ns": int(session["first_ts_ns"]),
        "last_seen_ns": int(session["last_ts_ns"]),
        "model_name": model_name,
        "model_version": int(answer.model_version),
        "alert_ids": alert_ids,
    }


def default_host() -> str:
    """This machine's name, for collectors not told otherwise."""
    return os.uname().nodename
