"""Alert records mapped to OCSF Detection Findings and Elastic Common Schema.

Both mappings read an ``alert`` record (``schemas/avro/alert``, as built by
``systerns.core.verdicts.build_alert``) and return plain JSON-ready dicts; no
Kafka, no network. The field-by-field tables are in ``docs/alerts.md``.

* ``to_ocsf``: OCSF 1.5.0, class Detection Finding (2004) in category
  Findings (2), with the ``host`` profile (``device``, ``actor``).
* ``to_ecs``: ECS 8.17.0, one document per alert with ``event.kind: alert``;
  fields ECS has no place for live under ``systerns.*``.

Every string in an alert was already cleaned by ``build_alert`` (redacted,
control characters replaced, length capped); nothing here adds untrusted text.
"""

from __future__ import annotations

import datetime as dt
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

OCSF_VERSION = "1.5.0"
ECS_VERSION = "8.17.0"
PRODUCT_NAME = "Systerns"
VENDOR_NAME = "Systerns"
#: ``container_id`` of a process that runs outside any container (sysdig's word).
HOST_CONTAINER_ID = "host"

#: What each reason is called in a finding title or rule name.
TITLES = {
    "crypto_mining": "Crypto-mining process",
    "masquerading": "Process masquerading as another program",
}
#: ATT&CK tactic of each technique Systerns reports: (tactic id, tactic name).
TACTICS = {
    "T1496": ("TA0040", "Impact"),
    "T1036": ("TA0005", "Defense Evasion"),
}
ATTACK_FRAMEWORK = "MITRE ATT&CK"

# OCSF enumerations used below, as (id, caption) pairs of OCSF 1.5.0.
_OCSF_SEVERITY = {
    "low": (2, "Low"),
    "medium": (3, "Medium"),
    "high": (4, "High"),
    "critical": (5, "Critical"),
}
_OCSF_SEVERITY_UNKNOWN = (0, "Unknown")
_OCSF_CATEGORY = (2, "Findings")
_OCSF_CLASS = (2004, "Detection Finding")
_OCSF_ACTIVITY_CREATE = (1, "Create")
_OCSF_ACTIVITY_UPDATE = (2, "Update")
_OCSF_STATUS_NEW = (1, "New")
_OCSF_ANALYTIC_LEARNING = (4, "Learning (ML/DL)")
_OCSF_DEVICE_UNKNOWN = (0, "Unknown")
_OCSF_OS_LINUX = (200, "Linux")
_OCSF_FILE_REGULAR = (1, "Regular File")

#: ECS ``event.severity`` per alert severity: the 0-100 scale Elastic Security
#: gives its rule severities, so a SIEM can sort Systerns alerts with its own.
ECS_SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}


@cache
def _product_version() -> str:
    try:
        return version("systerns")
    except PackageNotFoundError:
        return "unknown"


def title(alert: dict[str, Any]) -> str:
    """A short human title for an alert's reason, e.g. ``Crypto-mining process``."""
    reason = str(alert["reason"])
    return TITLES.get(reason, reason.replace("_", " ").capitalize())


def reason_confidence(alert: dict[str, Any]) -> float:
    """The model probability that backs the alert's reason, in [0, 1].

    Mining alerts rest on the malicious probability, masquerading alerts on how
    sure the model is of what the process behaves like.
    """
    if alert["reason"] == "crypto_mining":
        return float(alert["malicious_probability"])
    if alert["reason"] == "masquerading":
        return float(alert["behaves_like_confidence"])
    return max(
        float(alert["malicious_probability"]), float(alert["behaves_like_confidence"])
    )


def split_image(ref: str) -> tuple[str, str, str]:
    """Split an image reference into (name, tag, digest); missing parts are "".

    ``registry:5000/team/app:1.2@sha256:ab`` gives
    ``("registry:5000/team/app", "1.2", "sha256:ab")``.
    """
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest


def in_container(alert: dict[str, Any]) -> bool:
    """Whether the alert's process ran inside a container."""
    return alert["container_id"] not in ("", HOST_CONTAINER_ID)


def _parent_name(alert: dict[str, Any]) -> str:
    tree = alert.get("process_tree") or []
    for node in tree[1:]:
        if int(node["pid"]) == int(alert["ppid"]):
            return str(node["name"])
    return ""


def _ns_to_ms(ns: int) -> int:
    return int(ns) // 1_000_000


def _iso_ms(ms: int) -> str:
    # Integer arithmetic: a float of epoch milliseconds loses the last digit.
    seconds, millis = divmod(int(ms), 1000)
    when = dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(
        milliseconds=millis
    )
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def _technique_url(technique: str) -> str:
    return f"https://attack.mitre.org/techniques/{technique.replace('.', '/')}/"


def _tactic_url(tactic: str) -> str:
    return f"https://attack.mitre.org/tactics/{tactic}/"


def _ocsf_confidence(score: float) -> tuple[int, str]:
    if score >= 0.9:
        return 3, "High"
    if score >= 0.6:
        return 2, "Medium"
    return 1, "Low"


def _ocsf_process(alert: dict[str, Any]) -> dict[str, Any]:
    process: dict[str, Any] = {"pid": int(alert["pid"]), "name": alert["process_name"]}
    if alert["cmdline"]:
        process["cmd_line"] = alert["cmdline"]
    exe = str(alert["exe_path"])
    if exe:
        type_id, type_caption = _OCSF_FILE_REGULAR
        process["file"] = {
            "name": exe.rsplit("/", 1)[-1] or exe,
            "path": exe,
            "type_id": type_id,
            "type": type_caption,
        }
    if int(alert["ppid"]):
        parent: dict[str, Any] = {"pid": int(alert["ppid"])}
        parent_name = _parent_name(alert)
        if parent_name:
            parent["name"] = parent_name
        process["parent_process"] = parent
    return process


def _ocsf_container(alert: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = {"uid": alert["container_id"]}
    ref = str(alert.get("container_image", ""))
    if ref:
        name, tag, digest = split_image(ref)
        # OCSF requires image.uid; an alert knows the image only by reference,
        # so the digest is the id when present, else the reference itself.
        image: dict[str, Any] = {"uid": digest or ref, "name": name}
        if tag:
            image["tag"] = tag
        container["image"] = image
    return container


def _ocsf_attack(alert: dict[str, Any]) -> dict[str, Any]:
    technique = str(alert["mitre_technique"])
    attack: dict[str, Any] = {
        "technique": {
            "uid": technique,
            "name": alert["mitre_technique_name"],
            "src_url": _technique_url(technique),
        }
    }
    if technique in TACTICS:
        tactic_id, tactic_name = TACTICS[technique]
        attack["tactic"] = {
            "uid": tactic_id,
            "name": tactic_name,
            "src_url": _tactic_url(tactic_id),
        }
    return attack


def to_ocsf(
    alert: dict[str, Any],
    *,
    update: bool = False,
    count: int | None = None,
    include_raw: bool = False,
) -> dict[str, Any]:
    """An alert as an OCSF 1.5.0 Detection Finding (``class_uid`` 2004).

    Args:
        alert: an ``alert`` record.
        update: report a change to a finding already sent (``activity_id`` 2,
            Update) instead of a new one (1, Create), e.g. an incident whose
            count grew.
        count: how many alerts the finding stands for (OCSF ``count``); left
            out when None.
        include_raw: add the alert record itself as JSON in ``raw_data``.

    Returns:
        A JSON-ready dict.

    Raises:
        KeyError: the record lacks a field of the alert schema.
    """
    activity_id, activity_name = (
        _OCSF_ACTIVITY_UPDATE if update else _OCSF_ACTIVITY_CREATE
    )
    category_uid, category_name = _OCSF_CATEGORY
    class_uid, class_name = _OCSF_CLASS
    severity_id, severity = _OCSF_SEVERITY.get(
        str(alert["severity"]).lower(), _OCSF_SEVERITY_UNKNOWN
    )
    status_id, status = _OCSF_STATUS_NEW
    score = reason_confidence(alert)
    confidence_id, confidence = _ocsf_confidence(score)
    analytic_type_id, analytic_type = _OCSF_ANALYTIC_LEARNING
    device_type_id, device_type = _OCSF_DEVICE_UNKNOWN
    os_type_id, os_name = _OCSF_OS_LINUX
    first_ms = _ns_to_ms(alert["first_seen_ns"])
    last_ms = _ns_to_ms(alert["last_seen_ns"])
    process = _ocsf_process(alert)

    evidence: dict[str, Any] = {"process": process, "data": dict(alert["evidence"])}
    if in_container(alert):
        evidence["container"] = _ocsf_container(alert)

    finding: dict[str, Any] = {
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "class_uid": class_uid,
        "class_name": class_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": int(alert["created_ms"]),
        "start_time": first_ms,
        "end_time": last_ms,
        "duration": max(0, last_ms - first_ms),
        "message": alert["summary"],
        "confidence_id": confidence_id,
        "confidence": confidence,
        "confidence_score": round(score * 100),
        "finding_info": {
            "uid": alert["alert_id"],
            "title": title(alert),
            "desc": alert["summary"],
            "types": [alert["reason"]],
            "created_time": int(alert["created_ms"]),
            "first_seen_time": first_ms,
            "last_seen_time": last_ms,
            "analytic": {
                "name": alert["model_name"],
                "version": str(alert["model_version"]),
                "type_id": analytic_type_id,
                "type": analytic_type,
            },
            "attacks": [_ocsf_attack(alert)],
        },
        "device": {
            "hostname": alert["host"],
            "type_id": device_type_id,
            "type": device_type,
            "os": {"name": os_name, "type_id": os_type_id, "type": os_name},
        },
        "actor": {"process": process},
        "evidences": [evidence],
        "metadata": {
            "version": OCSF_VERSION,
            "uid": alert["alert_id"],
            "correlation_uid": alert["session_id"],
            "profiles": ["host"],
            "product": {
                "name": PRODUCT_NAME,
                "vendor_name": VENDOR_NAME,
                "version": _product_version(),
            },
        },
        "unmapped": {
            "behaves_like": alert["behaves_like"],
            "behaves_like_confidence": float(alert["behaves_like_confidence"]),
            "malicious_probability": float(alert["malicious_probability"]),
            "trigger": alert["trigger"],
            "schema_version": int(alert.get("schema_version", 1)),
        },
    }
    if count is not None:
        finding["count"] = int(count)
    if include_raw:
        finding["raw_data"] = json.dumps(alert, sort_keys=True, separators=(",", ":"))
    return finding


def to_ecs(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert as an Elastic Common Schema 8.17.0 document (``event.kind: alert``).

    Args:
        alert: an ``alert`` record.

    Returns:
        A JSON-ready dict with nested field sets (``event``, ``process`` ...)
        and Systerns' own fields under ``systerns``.

    Raises:
        KeyError: the record lacks a field of the alert schema.
    """
    technique = str(alert["mitre_technique"])
    first_ms = _ns_to_ms(alert["first_seen_ns"])
    last_ms = _ns_to_ms(alert["last_seen_ns"])

    threat: dict[str, Any] = {
        "framework": ATTACK_FRAMEWORK,
        "technique": {
            "id": [technique],
            "name": [alert["mitre_technique_name"]],
            "reference": [_technique_url(technique)],
        },
    }
    if technique in TACTICS:
        tactic_id, tactic_name = TACTICS[technique]
        threat["tactic"] = {
            "id": [tactic_id],
            "name": [tactic_name],
            "reference": [_tactic_url(tactic_id)],
        }

    process: dict[str, Any] = {"pid": int(alert["pid"]), "name": alert["process_name"]}
    if alert["exe_path"]:
        process["executable"] = alert["exe_path"]
    if alert["cmdline"]:
        process["command_line"] = alert["cmdline"]
    if int(alert["ppid"]):
        parent: dict[str, Any] = {"pid": int(alert["ppid"])}
        parent_name = _parent_name(alert)
        if parent_name:
            parent["name"] = parent_name
        process["parent"] = parent

    doc: dict[str, Any] = {
        "@timestamp": _iso_ms(alert["created_ms"]),
        "message": alert["summary"],
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "alert",
            "category": ["process", "intrusion_detection"],
            "type": ["info"],
            "id": alert["alert_id"],
            "action": alert["reason"],
            "reason": alert["summary"],
            "severity": ECS_SEVERITY.get(str(alert["severity"]).lower(), 0),
            "created": _iso_ms(alert["created_ms"]),
            "start": _iso_ms(first_ms),
            "end": _iso_ms(last_ms),
            "duration": max(
                0, int(alert["last_seen_ns"]) - int(alert["first_seen_ns"])
            ),
            "module": "systerns",
            "dataset": "systerns.alerts",
        },
        "rule": {
            "id": alert["reason"],
            "name": title(alert),
            "ruleset": "systerns",
        },
        "threat": threat,
        "host": {"name": alert["host"], "os": {"type": "linux"}},
        "process": process,
        "observer": {
            "vendor": VENDOR_NAME,
            "product": PRODUCT_NAME,
            "type": "sensor",
            "version": _product_version(),
        },
        "systerns": {
            "reason": alert["reason"],
            "severity": alert["severity"],
            "behaves_like": alert["behaves_like"],
            "confidence": float(alert["behaves_like_confidence"]),
            "malicious_probability": float(alert["malicious_probability"]),
            "session_id": alert["session_id"],
            "trigger": alert["trigger"],
            "model": {
                "name": alert["model_name"],
                "version": int(alert["model_version"]),
            },
            "evidence": dict(alert["evidence"]),
        },
    }
    if in_container(alert):
        container: dict[str, Any] = {"id": alert["container_id"]}
        ref = str(alert.get("container_image", ""))
        if ref:
            name, tag, digest = split_image(ref)
            image: dict[str, Any] = {"name": name}
            if tag:
                image["tag"] = [tag]
            if digest:
                image["hash"] = {"all": [digest]}
            container["image"] = image
        doc["container"] = container
    return doc
