"""OCSF and ECS forms of alerts.

OCSF output is checked against published OCSF 1.5.0 definitions shipped on
PyPI: ``ocsf-emitter`` (pydantic models generated from the compiled OCSF
1.5.0 schema, plus its invariant checks) for structure and types, and
``pydantic-ocsf`` (which ships the OCSF schema sources as JSON) for the
captions of enum siblings. No package on PyPI ships the ECS field definitions
(``ecs`` there is a game library, ``ecs-logging`` only formats log lines), so
ECS output is checked structurally against expectations written here.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from ocsf_emitter import InvalidFindingError
from ocsf_emitter import models as ocsf_models
from ocsf_emitter import validate as ocsf_validate
from pydantic import BaseModel, ValidationError

from systerns.core.formats import (
    ECS_VERSION,
    OCSF_VERSION,
    split_image,
    to_ecs,
    to_ocsf,
)
from systerns.core.verdicts import ModelAnswer, build_alert

CREATED_MS = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
FIRST_NS = 1_767_225_500_000_000_000


def make_alert(
    reason: str = "crypto_mining",
    *,
    container_id: str = "4f2a9c1b7d3e",
    image: str = "registry.local:5000/team/app:1.2",
    ppid: int = 1,
    cmdline: str = "kworker --donate-level 1 --pass=hunter2",
) -> dict:
    """An alert record made by the real ``build_alert``."""
    session = {
        "session_id": f"node-1/{container_id}/4242/99",
        "host": "node-1",
        "container_id": container_id,
        "container_image": image,
        "pid": 4242,
        "ppid": ppid,
        "comm": "kworker",
        "exe": "/var/lib/.x/kworker",
        "cmdline": cmdline,
        "exec_id": "99",
        "first_ts_ns": FIRST_NS,
        "last_ts_ns": FIRST_NS + 30 * 10**9,
        "n_events": 5000,
        "failed": 0,
        "counts": {"sched_yield": 4000, "futex": 1000},
        "paths": {"sys_cpu": 12},
        "tids": [4242, 4243],
        "sample_paths": ["/sys/devices/system/cpu/online"],
    }
    if reason == "crypto_mining":
        answer = ModelAnswer("unknown", 0.4, 0.97, 3, (("xmrig", 0.9),))
    else:
        answer = ModelAnswer("sha256sum", 0.99, 0.01, 3, (("sha256sum", 0.99),))
    return build_alert(
        session,
        answer,
        reason,
        "running",
        model_name="systerns",
        parent_name="containerd-shim",
        now_ms=CREATED_MS,
    )


def get(doc: dict, path: str) -> Any:
    """The value at a dotted path of nested dicts."""
    for part in path.split("."):
        doc = doc[part]
    return doc


def extras(model: BaseModel, where: str = "") -> list[str]:
    """Attributes the OCSF 1.5.0 models do not define, anywhere in a tree.

    ``unmapped`` and evidence ``data`` are free-form by definition.
    """
    found = [f"{where}{name}" for name in (model.model_extra or {})]
    for name in type(model).model_fields:
        if name in ("unmapped", "data"):
            continue
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                suffix = f"[{i}]" if isinstance(value, list) else ""
                found += extras(item, f"{where}{name}{suffix}.")
    return found


@cache
def ocsf_schema() -> dict:
    """The OCSF 1.5.0 schema sources as shipped by pydantic-ocsf.

    Read as a file: importing the ``ocsf`` package would install its import hook.
    """
    spec = importlib.util.find_spec("ocsf")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "schemas" / "v1_5_0.json"
    return json.loads(path.read_text())


def caption(enum_owner: dict, attribute: str, value: int) -> str:
    """The OCSF caption of an enum value of an attribute of a class or object."""
    return enum_owner["attributes"][attribute]["enum"][str(value)]["caption"]


CASES = {
    "mining_in_container": dict(reason="crypto_mining"),
    "masquerading_on_host": dict(reason="masquerading", container_id="host", image=""),
    "no_parent_no_cmdline": dict(ppid=0, cmdline=""),
    "image_with_digest": dict(image="nginx@sha256:" + "a" * 64),
}
OCSF_OPTIONS = {
    "create": {},
    "update_with_count": {"update": True, "count": 17},
    "with_raw_data": {"include_raw": True},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("options", OCSF_OPTIONS)
def test_ocsf_validates_against_the_ocsf_1_5_0_models(case, options):
    """The finding passes the generated OCSF 1.5.0 models and their invariants."""
    finding = to_ocsf(make_alert(**CASES[case]), **OCSF_OPTIONS[options])

    model = ocsf_models.DetectionFinding.model_validate(finding)
    ocsf_validate(model)

    # actor comes from the host profile (metadata.profiles), which the
    # generated class leaves out; it is checked with its own model.
    assert extras(model) == ["actor"]
    assert "host" in finding["metadata"]["profiles"]
    assert extras(ocsf_models.Actor.model_validate(finding["actor"])) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("type_uid", 200403),  # not class_uid * 100 + activity_id
        ("severity_id", 7),  # not an OCSF severity
        ("metadata.version", "1.3.0"),  # not the version the models are
        ("finding_info.uid", None),  # required
    ],
)
def test_the_ocsf_check_rejects_broken_findings(path, value):
    """The checks above are not vacuous: they fail on a broken finding."""
    finding = to_ocsf(make_alert())
    *parents, last = path.split(".")
    (get(finding, ".".join(parents)) if parents else finding)[last] = value

    with pytest.raises((ValidationError, InvalidFindingError)):
        ocsf_validate(ocsf_models.DetectionFinding.model_validate(finding))


def test_unknown_ocsf_attributes_are_found():
    """An attribute OCSF does not define is reported, however deep."""
    finding = to_ocsf(make_alert())
    finding["finding_info"]["severity_text"] = "bad"
    finding["evidences"][0]["process"]["nickname"] = "bad"

    found = extras(ocsf_models.DetectionFinding.model_validate(finding))

    assert sorted(found) == [
        "actor",
        "evidences[0].process.nickname",
        "finding_info.severity_text",
    ]


def test_ocsf_enum_siblings_carry_the_ocsf_captions():
    """Each ``*_id`` and its caption sibling agree with the OCSF 1.5.0 sources."""
    schema = ocsf_schema()
    finding_class = schema["events"]["finding"]
    dictionary = schema["dictionary"]
    objects = schema["objects"]

    for options in ({}, {"update": True}):
        f = to_ocsf(make_alert(), **options)
        info = f["finding_info"]
        process_file = f["evidences"][0]["process"]["file"]

        assert f["class_name"] == schema["events"]["detection_finding"]["caption"]
        assert f["activity_name"] == caption(
            finding_class, "activity_id", f["activity_id"]
        )
        assert f["status"] == caption(finding_class, "status_id", f["status_id"])
        assert f["severity"] == caption(dictionary, "severity_id", f["severity_id"])
        assert f["confidence"] == caption(
            dictionary, "confidence_id", f["confidence_id"]
        )
        assert info["analytic"]["type"] == caption(
            objects["analytic"], "type_id", info["analytic"]["type_id"]
        )
        assert f["device"]["os"]["type"] == caption(
            objects["os"], "type_id", f["device"]["os"]["type_id"]
        )
        assert process_file["type"] == caption(
            objects["file"], "type_id", process_file["type_id"]
        )


def test_ocsf_maps_each_alert_field():
    """Field by field, as docs/alerts.md tables it."""
    alert = make_alert()
    f = to_ocsf(alert)
    process = f["evidences"][0]["process"]

    assert (f["class_uid"], f["category_uid"], f["activity_id"]) == (2004, 2, 1)
    assert f["type_uid"] == 200401
    assert f["severity_id"] == 5
    assert f["time"] == CREATED_MS
    assert f["start_time"] == FIRST_NS // 10**6
    assert f["end_time"] == FIRST_NS // 10**6 + 30_000
    assert f["duration"] == 30_000
    assert f["message"] == alert["summary"]
    assert f["confidence_score"] == 97
    assert f["finding_info"] == {
        "uid": alert["alert_id"],
        "title": "Crypto-mining process",
        "desc": alert["summary"],
        "types": ["crypto_mining"],
        "created_time": CREATED_MS,
        "first_seen_time": FIRST_NS // 10**6,
        "last_seen_time": FIRST_NS // 10**6 + 30_000,
        "analytic": {
            "name": "systerns",
            "version": "3",
            "type_id": 4,
            "type": "Learning (ML/DL)",
        },
        "attacks": [
            {
                "technique": {
                    "uid": "T1496",
                    "name": "Resource Hijacking",
                    "src_url": "https://attack.mitre.org/techniques/T1496/",
                },
                "tactic": {
                    "uid": "TA0040",
                    "name": "Impact",
                    "src_url": "https://attack.mitre.org/tactics/TA0040/",
                },
            }
        ],
    }
    assert f["device"]["hostname"] == "node-1"
    assert f["evidences"][0]["container"] == {
        "uid": "4f2a9c1b7d3e",
        "image": {
            "uid": "registry.local:5000/team/app:1.2",
            "name": "registry.local:5000/team/app",
            "tag": "1.2",
        },
    }
    assert process == {
        "pid": 4242,
        "name": "kworker",
        "cmd_line": alert["cmdline"],
        "file": {
            "name": "kworker",
            "path": "/var/lib/.x/kworker",
            "type_id": 1,
            "type": "Regular File",
        },
        "parent_process": {"pid": 1, "name": "containerd-shim"},
    }
    assert f["actor"] == {"process": process}
    assert f["evidences"][0]["data"] == alert["evidence"]
    assert f["metadata"]["version"] == OCSF_VERSION == "1.5.0"
    assert f["metadata"]["uid"] == alert["alert_id"]
    assert f["metadata"]["correlation_uid"] == alert["session_id"]
    assert f["metadata"]["product"]["name"] == "Systerns"
    assert f["metadata"]["product"]["vendor_name"] == "Systerns"
    assert f["unmapped"] == {
        "behaves_like": "unknown",
        "behaves_like_confidence": 0.4,
        "malicious_probability": 0.97,
        "trigger": "running",
        "schema_version": alert["schema_version"],
    }
    assert "raw_data" not in f and "count" not in f


def test_ocsf_masquerading_on_the_host_has_no_container():
    """A process outside containers gets no container; T1036 maps to its tactic."""
    f = to_ocsf(make_alert("masquerading", container_id="host", image=""))

    assert "container" not in f["evidences"][0]
    assert f["severity_id"] == 4
    assert f["confidence_score"] == 99
    attack = f["finding_info"]["attacks"][0]
    assert attack["technique"]["uid"] == "T1036"
    assert attack["tactic"]["uid"] == "TA0005"


def test_ocsf_update_count_and_raw_data():
    """Updates are activity 2 with the incident's count; raw_data is the alert."""
    alert = make_alert()
    f = to_ocsf(alert, update=True, count=17, include_raw=True)

    assert (f["activity_id"], f["type_uid"], f["count"]) == (2, 200402, 17)
    assert f["type_name"] == "Detection Finding: Update"
    assert json.loads(f["raw_data"]) == alert


def test_secrets_stay_masked_in_both_forms():
    """The alert's redaction carries through; the mapping adds no raw input."""
    alert = make_alert(cmdline="miner -o pool:3333 --password=hunter2")

    text = json.dumps(to_ocsf(alert, include_raw=True)) + json.dumps(to_ecs(alert))

    assert "hunter2" not in text
    assert "--password=***" in text


def test_mappings_do_not_change_the_alert():
    """Both functions leave their input as it was."""
    alert = make_alert()
    before = json.dumps(alert, sort_keys=True)

    to_ocsf(alert, include_raw=True)
    to_ecs(alert)

    assert json.dumps(alert, sort_keys=True) == before


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        ("nginx", ("nginx", "", "")),
        ("nginx:1.25", ("nginx", "1.25", "")),
        ("registry.local:5000/team/app", ("registry.local:5000/team/app", "", "")),
        (
            "registry.local:5000/team/app:1.2",
            ("registry.local:5000/team/app", "1.2", ""),
        ),
        ("app:1@sha256:ab", ("app", "1", "sha256:ab")),
        ("app@sha256:ab", ("app", "", "sha256:ab")),
        ("", ("", "", "")),
    ],
)
def test_split_image(ref, parts):
    """Registry ports are not tags; digests come off first."""
    assert parts == split_image(ref)


# What the ECS 8.17.0 field reference says about the fields used here: its
# level, type and, for keyword arrays, that the value is a list. Written from
# the reference for these tests; not the official schema.
ECS_FIELDS = {
    "@timestamp": "date",
    "message": "text",
    "ecs.version": "keyword",
    "event.kind": "keyword",
    "event.category": "keyword[]",
    "event.type": "keyword[]",
    "event.id": "keyword",
    "event.action": "keyword",
    "event.reason": "keyword",
    "event.severity": "long",
    "event.created": "date",
    "event.start": "date",
    "event.end": "date",
    "event.duration": "long",
    "event.module": "keyword",
    "event.dataset": "keyword",
    "rule.id": "keyword",
    "rule.name": "keyword",
    "rule.ruleset": "keyword",
    "threat.framework": "keyword",
    "threat.technique.id": "keyword[]",
    "threat.technique.name": "keyword[]",
    "threat.technique.reference": "keyword[]",
    "threat.tactic.id": "keyword[]",
    "threat.tactic.name": "keyword[]",
    "threat.tactic.reference": "keyword[]",
    "host.name": "keyword",
    "host.os.type": "keyword",
    "container.id": "keyword",
    "container.image.name": "keyword",
    "container.image.tag": "keyword[]",
    "container.image.hash.all": "keyword[]",
    "process.pid": "long",
    "process.name": "keyword",
    "process.executable": "keyword",
    "process.command_line": "wildcard",
    "process.parent.pid": "long",
    "process.parent.name": "keyword",
    "observer.vendor": "keyword",
    "observer.product": "keyword",
    "observer.type": "keyword",
    "observer.version": "keyword",
}
ECS_ALLOWED = {
    "event.kind": {
        "alert",
        "asset",
        "enrichment",
        "event",
        "metric",
        "state",
        "pipeline_error",
        "signal",
    },
    "host.os.type": {"linux", "macos", "unix", "windows", "ios", "android"},
}
# event.type values ECS expects with each event.category used here.
ECS_CATEGORY_TYPES = {
    "process": {"access", "change", "end", "info", "start"},
    "intrusion_detection": {"allowed", "denied", "info"},
}


def flatten(doc: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted paths of the leaves of a nested document."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not path.startswith("systerns."):
            out |= flatten(value, f"{path}.")
        else:
            out[path] = value
    return out


@pytest.mark.parametrize("case", CASES)
def test_ecs_fields_have_the_ecs_types(case):
    """Every field is an ECS field of the right shape, or lives under systerns."""
    doc = flatten(to_ecs(make_alert(**CASES[case])))

    for path, value in doc.items():
        if path.startswith("systerns."):
            continue
        assert path in ECS_FIELDS, f"{path} is not an ECS field used by the mapping"
        kind = ECS_FIELDS[path]
        if kind.endswith("[]"):
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif kind == "long":
            assert isinstance(value, int) and not isinstance(value, bool)
        elif kind == "date":
            assert dt.datetime.fromisoformat(value).tzinfo is not None
            assert value.endswith("Z")
        else:
            assert isinstance(value, str) and value, path
        if path in ECS_ALLOWED:
            assert value in ECS_ALLOWED[path]
    for category in doc["event.category"]:
        assert set(doc["event.type"]) <= ECS_CATEGORY_TYPES[category]


def test_ecs_maps_each_alert_field():
    """Field by field, as docs/alerts.md tables it."""
    alert = make_alert()
    doc = to_ecs(alert)

    expected = {
        "@timestamp": "2026-01-01T00:00:00.123Z",
        "message": alert["summary"],
        "ecs.version": ECS_VERSION,
        "event.kind": "alert",
        "event.category": ["process", "intrusion_detection"],
        "event.type": ["info"],
        "event.id": alert["alert_id"],
        "event.action": "crypto_mining",
        "event.severity": 99,
        "event.start": "2025-12-31T23:58:20.000Z",
        "event.end": "2025-12-31T23:58:50.000Z",
        "event.duration": 30 * 10**9,
        "rule.id": "crypto_mining",
        "rule.name": "Crypto-mining process",
        "threat.framework": "MITRE ATT&CK",
        "threat.technique.id": ["T1496"],
        "threat.technique.name": ["Resource Hijacking"],
        "threat.tactic.id": ["TA0040"],
        "threat.tactic.name": ["Impact"],
        "host.name": "node-1",
        "container.id": "4f2a9c1b7d3e",
        "container.image.name": "registry.local:5000/team/app",
        "container.image.tag": ["1.2"],
        "process.pid": 4242,
        "process.name": "kworker",
        "process.executable": "/var/lib/.x/kworker",
        "process.command_line": alert["cmdline"],
        "process.parent.pid": 1,
        "process.parent.name": "containerd-shim",
        "systerns.behaves_like": "unknown",
        "systerns.confidence": 0.4,
        "systerns.malicious_probability": 0.97,
        "systerns.evidence": alert["evidence"],
        "systerns.session_id": alert["session_id"],
        "systerns.model.version": 3,
    }
    assert expected == {path: get(doc, path) for path in expected}
    assert ECS_VERSION == "8.17.0"


def test_ecs_host_process_without_parent_or_image():
    """No container set outside containers; no parent when ppid is 0."""
    doc = to_ecs(make_alert("masquerading", container_id="host", image="", ppid=0))

    assert "container" not in doc
    assert "parent" not in doc["process"]
    assert doc["event"]["severity"] == 73
    assert doc["threat"]["tactic"]["id"] == ["TA0005"]


def test_both_forms_are_json():
    """The documents survive a JSON round trip unchanged."""
    alert = make_alert()

    for doc in (to_ocsf(alert, include_raw=True), to_ecs(alert)):
        assert json.loads(json.dumps(doc)) == doc


def test_formats_and_suppression_import_no_kafka_or_faust():
    """Both stay in the Kafka-free core."""
    code = (
        "import sys, systerns.core.formats, systerns.core.suppression;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('confluent_kafka', 'faust', 'aiokafka')]; print(bad); sys.exit(bool(bad))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
