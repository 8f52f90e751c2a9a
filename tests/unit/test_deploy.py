"""Checks deploy/: files parse, meet their schemas and agree with the code."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from google.protobuf import text_format
from systerns.core.settings import PREFIX, Settings
from tensorflow_serving.config import model_server_config_pb2

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
DOCKER_DIR = DEPLOY / "docker"
SERVING_DIR = DEPLOY / "serving"
TOPICS_SCRIPT = DEPLOY / "kafka" / "create-topics.sh"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

#: Kubernetes releases the manifests must meet: the oldest one docs/operations.md
#: supports and the newest kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
MODEL_NAME = "systerns"
#: `systerns` subcommands (cli/); a manifest naming another one would not start.
SUBCOMMANDS = frozenset(
    "collect worker serve alerts train evaluate lab demo scan replay".split()
)
#: Environment settings the processes accept; any other SYSTERNS_* stops them.
SETTINGS = frozenset(PREFIX + field.name.upper() for field in fields(Settings))
METRICS_PORTS = {"collector": 9108, "worker": 9109}
TOPICS = tuple(
    f"systerns.{name}" for name in ("events", "verdicts", "alerts", "deadletter")
)
DAY_MS = 24 * 3600 * 1000
#: Repository paths that `systerns train` writes; absent on a fresh checkout.
GENERATED_PATHS = frozenset({"models/"})
#: Kinds whose pods come from spec.template.
WORKLOAD_KINDS = frozenset({"Deployment", "DaemonSet", "Job"})
#: API groups built into Kubernetes (kubernetes-validate has their schemas).
BUILTIN_API_GROUPS = frozenset(
    {"", "apps", "batch", "autoscaling", "policy", "networking.k8s.io"}
)
#: Host folders the collector reads, where it mounts them.
COLLECTOR_HOST_MOUNTS = ("/host/proc", "/host/boot", "/host/lib/modules", "/host/usr")
#: Name prefix of Systerns' own images.
OWN_IMAGE_PREFIX = "systerns-"


# ---------------------------------------------------------------- loaders


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(K8S_DIR)}#{index}", doc)
        for path in sorted(K8S_DIR.rglob("*.yaml"))
        for index, doc in enumerate(load_docs(path))
    ]


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in k8s_objects() if obj["kind"] == kind]


def k8s_one(kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in k8s_kind(kind) if obj["metadata"].get("name") == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def workloads() -> list[dict[str, Any]]:
    return [obj for _, obj in k8s_objects() if obj["kind"] in WORKLOAD_KINDS]


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(obj)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def config_map_data(name: str) -> dict[str, str]:
    return k8s_one("ConfigMap", name)["data"]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def dockerfiles() -> list[Path]:
    return sorted(DOCKER_DIR.glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    parsed = DockerfileParser(str(path))
    return [
        (item["instruction"], item["value"])
        for item in parsed.structure
        if item["instruction"] != "COMMENT"
    ]


def global_args(path: Path) -> dict[str, str]:
    """ARG defaults declared before the first FROM (usable in FROM lines)."""
    args: dict[str, str] = {}
    for instruction, value in instructions(path):
        if instruction == "FROM":
            break
        if instruction == "ARG" and "=" in value:
            name, default = value.split("=", 1)
            args[name.strip()] = default.strip()
    return args


def base_images(path: Path) -> list[str]:
    args = global_args(path)
    images = []
    for instruction, value in instructions(path):
        if instruction == "FROM":
            image = value.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


def copy_sources(path: Path) -> list[str]:
    """Sources of COPY/ADD from the build context (not from another stage)."""
    sources = []
    for instruction, value in instructions(path):
        if instruction not in {"COPY", "ADD"}:
            continue
        words = shlex.split(value)
        flags = [word for word in words if word.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        sources.extend([word for word in words if not word.startswith("--")][:-1])
    return sources


def package_folders() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {
        f"{folder}/"
        for folder in pyproject["tool"]["setuptools"]["package-dir"].values()
    }


def models_config() -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(
        (SERVING_DIR / "models.config").read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )


def topic_table() -> dict[str, tuple[int, int]]:
    """name -> (partitions, retention_ms) from the table in create-topics.sh."""
    text = TOPICS_SCRIPT.read_text()
    block = re.search(r'^TOPICS="\n(.*?)^"', text, re.S | re.M)
    assert block, "TOPICS table not found in create-topics.sh"
    table = {}
    for line in block.group(1).splitlines():
        row = re.fullmatch(r"(\S+)\s+(\d+)\s+\$\(\((\d+) \* DAY_MS\)\)", line.strip())
        assert row, f"unexpected row in the TOPICS table: {line!r}"
        name, partitions, days = row.groups()
        table[name] = (int(partitions), int(days) * DAY_MS)
    return table


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("valueFrom"))
        for item in container.get("env", [])
    }


def flag_values(args: list[str]) -> dict[str, str]:
    return dict(
        arg[2:].split("=", 1) for arg in args if arg.startswith("--") and "=" in arg
    )


# ------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses_to_mappings(path: Path) -> None:
    docs = load_docs(path)

    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


# ------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("where", "obj"), k8s_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_k8s_object_validates_against_kubernetes_schema(
    where: str, obj: dict[str, Any], version: str
) -> None:
    # strict: unknown fields fail, so a misspelt key cannot pass silently.
    validated = kubernetes_validate.validate(obj, version, strict=True)

    assert validated == version.rsplit(".", 1)[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_strict_validation_rejects_a_misspelt_field(version: str) -> None:
    daemonset = copy.deepcopy(k8s_one("DaemonSet", "systerns-collector"))
    pod_spec(daemonset)["hostPid"] = True

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, version, strict=True)


def test_k8s_objects_live_in_the_systerns_namespace() -> None:
    objects = k8s_objects()

    assert len(objects) >= 15
    for where, obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "systerns", where


def test_k8s_ships_no_custom_resources() -> None:
    # Every object must be checked by a real schema: no CRD-backed kinds.
    for where, obj in k8s_objects():
        group = obj["apiVersion"].rpartition("/")[0]
        assert group in BUILTIN_API_GROUPS, where


def test_collector_daemonset_runs_on_every_node_with_host_access() -> None:
    daemonset = k8s_one("DaemonSet", "systerns-collector")
    spec = pod_spec(daemonset)
    collector = next(c for c in spec["containers"] if c["name"] == "collector")
    mounts = {m["mountPath"]: m for m in collector["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    assert spec["hostPID"] is True
    assert {"operator": "Exists"} in spec["tolerations"]
    assert collector["securityContext"]["privileged"] is True
    for path in (*COLLECTOR_HOST_MOUNTS, "/host/dev"):
        host_path = volumes[mounts[path]["name"]]["hostPath"]["path"]
        assert host_path == path.removeprefix("/host"), path
    sockets = [m for m in collector["volumeMounts"] if m["mountPath"].endswith(".sock")]
    assert sockets and all(m["readOnly"] for m in sockets)
    assert env_of(collector)["HOST_ROOT"] == "/host"


def test_driver_download_is_opt_in_everywhere() -> None:
    daemonset = k8s_one("DaemonSet", "systerns-collector")
    loader = next(
        c for c in pod_spec(daemonset)["initContainers"] if c["name"] == "load-driver"
    )
    service = compose()["services"]["collector-driver"]

    assert env_of(loader)["COLLECTOR_DRIVER_DOWNLOAD"] == "no"
    assert service["environment"]["COLLECTOR_DRIVER_DOWNLOAD"] == "no"
    assert (
        'DOWNLOAD="${COLLECTOR_DRIVER_DOWNLOAD:-no}"'
        in (DOCKER_DIR / "collector-driver.sh").read_text()
    )


def test_every_container_has_cpu_and_memory_limits() -> None:
    checked = 0
    for obj in workloads():
        for container in containers(obj):
            limits = container.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(limits), (
                f"{obj['metadata']} {container['name']}"
            )
            checked += 1

    assert checked >= 6


def test_pods_get_no_service_link_variables() -> None:
    # Kubernetes would inject <SERVICE>_SERVICE_HOST etc. for each Service; a
    # Service named systerns-* would yield SYSTERNS_* names the settings refuse.
    services = [svc["metadata"]["name"] for svc in k8s_kind("Service")]

    assert any(name.upper().replace("-", "_").startswith(PREFIX) for name in services)
    for obj in workloads():
        assert pod_spec(obj)["enableServiceLinks"] is False, obj["metadata"]


def test_worker_autoscaler_follows_consumer_lag_up_to_partition_count() -> None:
    hpa = k8s_one("HorizontalPodAutoscaler", "systerns-worker")
    metric = hpa["spec"]["metrics"][0]
    labels = metric["external"]["metric"]["selector"]["matchLabels"]
    events_partitions = topic_table()["systerns.events"][0]
    worker = pod_spec(k8s_one("Deployment", "systerns-worker"))["containers"][0]
    compose_worker = compose()["services"]["worker"]["environment"]

    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "systerns-worker",
    }
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "kafka_consumergroup_lag"
    assert labels["topic"] == "systerns.events"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= events_partitions
    # The lag is per consumer group, and the group is the Faust app id.
    assert labels["consumergroup"] == env_of(worker)["SYSTERNS_WORKER_ID"]
    assert labels["consumergroup"] == compose_worker["SYSTERNS_WORKER_ID"]


def test_serving_readiness_comes_from_rest_model_status() -> None:
    deployment = k8s_one("Deployment", "systerns-serving")
    serving = next(
        c for c in pod_spec(deployment)["containers"] if c["name"] == "serving"
    )
    ports = {p["name"]: p["containerPort"] for p in serving["ports"]}
    probe = serving["readinessProbe"]["httpGet"]

    assert probe["path"] == f"/v1/models/{MODEL_NAME}"
    assert ports[probe["port"]] == 8501
    assert ports["grpc"] == 8500


def test_services_and_policies_select_existing_pods() -> None:
    pod_labels = [obj["spec"]["template"]["metadata"]["labels"] for obj in workloads()]

    def selects(selector: dict[str, Any]) -> bool:
        match = selector.get("matchLabels", {})
        exprs = selector.get("matchExpressions", [])
        return any(
            all(labels.get(k) == v for k, v in match.items())
            and all(labels.get(e["key"]) in e["values"] for e in exprs)
            for labels in pod_labels
        )

    for service in k8s_kind("Service"):
        name = service["metadata"]["name"]
        assert selects({"matchLabels": service["spec"]["selector"]}), name
    for policy in k8s_kind("NetworkPolicy"):
        assert selects(policy["spec"]["podSelector"]), policy["metadata"]["name"]
    for kind in ("Deployment", "DaemonSet"):
        for obj in k8s_kind(kind):
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), obj["metadata"]["name"]


def test_network_policies_deny_by_default_and_open_kafka_for_its_clients() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in k8s_kind("NetworkPolicy")}
    deny = policies["systerns-default-deny"]
    kafka = policies["systerns-kafka-egress"]
    kafka_components = set(kafka["podSelector"]["matchExpressions"][0]["values"])
    kafka_clients = {
        obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for obj in workloads()
        if any(
            ref.get("configMapRef", {}).get("name") == "systerns-kafka"
            for c in containers(obj)
            for ref in c.get("envFrom", [])
        )
    }

    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert {"collector", "worker", "topics", "replay"} <= kafka_clients
    assert kafka_clients <= kafka_components


def test_secrets_referenced_are_documented() -> None:
    doc = OPERATIONS_DOC.read_text()
    refs: set[tuple[str, str | None]] = set()
    for obj in workloads():
        for volume in pod_spec(obj).get("volumes", []):
            if "secret" in volume:
                refs.add((volume["secret"]["secretName"], None))
        for container in containers(obj):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))

    assert refs
    for name, key in refs:
        assert name in doc, f"Secret {name} is not explained in {OPERATIONS_DOC}"
        if key:
            assert f"{key}=" in doc, (
                f"key {key} of Secret {name} is not in {OPERATIONS_DOC}"
            )


def test_k8s_config_maps_copy_the_canonical_files() -> None:
    serving = config_map_data("systerns-serving-config")
    topics = config_map_data("systerns-topics-script")

    for name in ("models.config", "batching.config", "monitoring.config"):
        assert serving[name] == (SERVING_DIR / name).read_text(), name
    assert topics["create-topics.sh"] == TOPICS_SCRIPT.read_text()


# ------------------------------------------------------------- compose


def test_compose_validates_against_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.Draft7Validator(schema)

    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(compose())
    ]

    assert schema["title"] == "Compose Specification"
    assert errors == []


def test_compose_specification_rejects_a_misspelt_service_key() -> None:
    document = compose()
    document["services"]["collector"]["privilged"] = True

    assert not jsonschema.Draft7Validator(compose_schema()).is_valid(document)


def test_compose_builds_from_the_repository_root() -> None:
    builds = {
        name: s["build"] for name, s in compose()["services"].items() if "build" in s
    }

    assert {"collector-driver", "worker"} <= set(builds)
    for build in builds.values():
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                continue
            relative = (COMPOSE_FILE.parent / source).resolve().relative_to(ROOT)
            if f"{relative}/" in GENERATED_PATHS:
                continue
            assert (ROOT / relative).exists(), f"{name}: {source}"


def test_compose_collector_is_privileged_in_host_pid() -> None:
    collector = compose()["services"]["collector"]

    assert collector["privileged"] is True
    assert collector["pid"] == "host"
    assert (
        collector["depends_on"]["collector-driver"]["condition"]
        == "service_completed_successfully"
    )


# ------------------------------------------------------------- images


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_copies_only_existing_repository_paths(path: Path) -> None:
    sources = copy_sources(path)

    ignore_file = path.with_name(f"{path.name}.dockerignore")
    ignored = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    assert sources
    for source in sources:
        assert not source.startswith(("/", "..", "http")), source
        assert not any(source.startswith(rule) for rule in ignored), source
        if source in GENERATED_PATHS:
            continue
        assert (ROOT / source).exists(), f"{path.name}: COPY {source}"


@pytest.mark.parametrize("name", ["collector.Dockerfile", "worker.Dockerfile"])
def test_package_images_copy_every_package_folder(name: str) -> None:
    sources = set(copy_sources(DOCKER_DIR / name))

    assert "pyproject.toml" in sources
    assert package_folders() <= sources


def test_model_image_copies_the_export_folder() -> None:
    assert "models/" in copy_sources(DOCKER_DIR / "model.Dockerfile")


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_base_images_are_pinned(path: Path) -> None:
    for image in base_images(path):
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), (
            f"{path.name}: {image}"
        )


def test_third_party_images_agree_across_files() -> None:
    services = compose()["services"]
    model_args = global_args(DOCKER_DIR / "model.Dockerfile")
    k8s_images = {c["image"] for obj in workloads() for c in containers(obj)}

    assert services["serving"]["image"] == model_args["SERVING_IMAGE"]
    assert services["kafka"]["image"] == services["topics"]["image"]
    assert {services["serving"]["image"], services["kafka"]["image"]} <= k8s_images


def test_collector_image_installs_sysdig_from_debian() -> None:
    path = DOCKER_DIR / "collector.Dockerfile"
    runs = " ".join(
        value for instruction, value in instructions(path) if instruction == "RUN"
    )

    assert all(image.startswith("debian:") for image in base_images(path))
    assert re.search(r"apt-get install .*sysdig=\$\{SYSDIG_VERSION\}", runs)


def test_worker_image_runs_as_non_root() -> None:
    users = [
        v for i, v in instructions(DOCKER_DIR / "worker.Dockerfile") if i == "USER"
    ]

    assert users and users[-1].split(":")[0] not in {"0", "root"}


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(DEPLOY.rglob("*.sh"))
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: pip install -e .[test]"

    result = subprocess.run(
        [shellcheck, *map(str, scripts)], capture_output=True, text=True
    )

    assert len(scripts) >= 2
    assert result.returncode == 0, result.stdout


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e .[test]"

    result = subprocess.run(
        [hadolint, "--no-color", *map(str, dockerfiles())],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stdout


# ------------------------------------------------------------- serving


def test_model_config_names_the_exported_model() -> None:
    configs = models_config().model_config_list.config

    assert [c.name for c in configs] == [MODEL_NAME]
    config = configs[0]
    # `systerns train` writes models/<name>/<version>/saved_model.pb; the
    # server sees models/ at /models.
    assert config.base_path == f"/models/{MODEL_NAME}"
    assert config.base_path.endswith(f"/{config.name}")
    assert config.model_platform == "tensorflow"
    assert config.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert all(v > 0 for v in config.model_version_policy.specific.versions)


def test_model_config_parser_rejects_unknown_fields() -> None:
    with pytest.raises(text_format.ParseError):
        text_format.Parse(
            'model_config_list { config { nme: "x" } }',
            model_server_config_pb2.ModelServerConfig(),
        )


def test_exported_versions_exist_for_the_config() -> None:
    export = ROOT / "models" / MODEL_NAME
    if not export.is_dir():
        pytest.skip("models/systerns not exported yet (run `systerns train`)")
    versions = (
        models_config()
        .model_config_list.config[0]
        .model_version_policy.specific.versions
    )

    for version in versions:
        assert (export / str(version) / "saved_model.pb").is_file(), version


def test_deployments_serve_the_newest_exported_version() -> None:
    """Live traffic gets the highest listed version: it must be the newest one."""
    export = ROOT / "models" / MODEL_NAME
    if not export.is_dir():
        pytest.skip("models/systerns not exported yet (run `systerns train`)")
    exported = [int(d.name) for d in export.iterdir()
                if d.name.isdigit() and (d / "saved_model.pb").is_file()]
    versions = (
        models_config()
        .model_config_list.config[0]
        .model_version_policy.specific.versions
    )

    assert max(versions) == max(exported)


def test_batching_config_is_consistent() -> None:
    # Structural check: BatchingParameters' proto is not in tensorflow-serving-api.
    text = (SERVING_DIR / "batching.config").read_text()
    body = "\n".join(line.split("#")[0] for line in text.splitlines())
    wrapped = {
        k: int(v) for k, v in re.findall(r"(\w+)\s*\{\s*value:\s*(\d+)\s*\}", body)
    }
    allowed = [int(v) for v in re.findall(r"allowed_batch_sizes:\s*(\d+)", body)]

    assert {"max_batch_size", "batch_timeout_micros", "num_batch_threads"} <= set(
        wrapped
    )
    assert allowed == sorted(set(allowed))
    assert allowed[-1] == wrapped["max_batch_size"]
    assert wrapped["batch_timeout_micros"] > 0


def serving_commands() -> dict[str, list[str]]:
    deployment = k8s_one("Deployment", "systerns-serving")
    serving = next(
        c for c in pod_spec(deployment)["containers"] if c["name"] == "serving"
    )
    entrypoint = next(
        v for i, v in instructions(DOCKER_DIR / "model.Dockerfile") if i == "ENTRYPOINT"
    )
    return {
        "compose": compose()["services"]["serving"]["entrypoint"]
        + compose()["services"]["serving"]["command"],
        "k8s": serving["command"] + serving["args"],
        "model.Dockerfile": json.loads(entrypoint),
    }


@pytest.mark.parametrize("where", ["compose", "k8s", "model.Dockerfile"])
def test_tf_serving_uses_config_file_and_batching(where: str) -> None:
    command = serving_commands()[where]
    flags = flag_values(command)

    assert command[0] == "tensorflow_model_server"
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["enable_batching"] == "true"
    assert flags["model_config_file"].endswith("/models.config")
    assert flags["batching_parameters_file"].endswith("/batching.config")
    assert "model_name" not in flags and "model_base_path" not in flags


def test_tf_serving_config_paths_are_mounted() -> None:
    deployment = k8s_one("Deployment", "systerns-serving")
    spec = pod_spec(deployment)
    serving = next(c for c in spec["containers"] if c["name"] == "serving")
    flags = flag_values(serving["args"])
    mounts = {m["name"]: m["mountPath"] for m in serving["volumeMounts"]}
    config_volume = next(v for v in spec["volumes"] if "configMap" in v)
    served = set(config_map_data(config_volume["configMap"]["name"]))
    compose_mounts = dict(
        v.split(":")[:2] for v in compose()["services"]["serving"]["volumes"]
    )

    for flag in (
        "model_config_file",
        "batching_parameters_file",
        "monitoring_config_file",
    ):
        folder, _, name = flags[flag].rpartition("/")
        assert folder == mounts[config_volume["name"]] and name in served, flag
    assert compose_mounts["../serving"] == folder
    assert (
        compose_mounts["../../models"]
        == models_config().model_config_list.config[0].base_path.rpartition("/")[0]
    )
    assert mounts["models"] == "/models"


def test_model_name_matches_the_clients() -> None:
    worker = compose()["services"]["worker"]["environment"]

    assert worker["SYSTERNS_MODEL_NAME"] == MODEL_NAME
    assert config_map_data("systerns-model-client")["SYSTERNS_MODEL_NAME"] == MODEL_NAME
    assert worker["SYSTERNS_MODEL_TARGET"] == "serving:8500"
    assert config_map_data("systerns-model-client")["SYSTERNS_MODEL_TARGET"].endswith(
        ":8500"
    )


# ------------------------------------------------------------- commands and settings


def named_subcommands() -> list[tuple[str, str]]:
    """(where, subcommand) for every `systerns <subcommand>` the deploy files run."""
    found = []
    for name, service in compose()["services"].items():
        image = service.get("image", "")
        entrypoint = service.get("entrypoint")
        if image.startswith(OWN_IMAGE_PREFIX) and entrypoint in (None, ["systerns"]):
            found.append((f"compose:{name}", service["command"][0]))
    for obj in workloads():
        for container in containers(obj):
            command = container.get("command")
            if not container["image"].startswith(OWN_IMAGE_PREFIX) or command not in (
                None,
                ["systerns"],
            ):
                continue
            found.append(
                (f"k8s:{obj['metadata']}:{container['name']}", container["args"][0])
            )
    for path in dockerfiles():
        steps = dict(instructions(path))
        if steps.get("ENTRYPOINT") == '["systerns"]':
            found.append((path.name, json.loads(steps["CMD"])[0]))
    for line in OPERATIONS_DOC.read_text().splitlines():
        match = re.match(r"\s*(?:\$ )?systerns ([a-z-]+)", line)
        if match:
            found.append(("docs/operations.md", match.group(1)))
    return found


def test_named_subcommands_exist() -> None:
    found = named_subcommands()

    assert {"collect", "worker", "replay"} <= {sub for _, sub in found}
    unknown = [(where, sub) for where, sub in found if sub not in SUBCOMMANDS]
    assert unknown == []


def named_settings() -> list[tuple[str, str]]:
    found = []
    for name, service in compose()["services"].items():
        found += [(f"compose:{name}", key) for key in service.get("environment", {})]
    for obj in workloads():
        for container in containers(obj):
            found += [(f"k8s:{container['name']}", key) for key in env_of(container)]
    for config_map in k8s_kind("ConfigMap"):
        found += [
            (f"configmap:{config_map['metadata']['name']}", key)
            for key in config_map["data"]
        ]
    for path in dockerfiles():
        for instruction, value in instructions(path):
            if instruction == "ENV":
                found += [(path.name, key) for key in re.findall(r"(\w+)=", value)]
    return [(where, key) for where, key in found if key.startswith("SYSTERNS_")]


def test_named_settings_exist() -> None:
    found = named_settings()

    assert len({key for _, key in found}) >= 8
    unknown = [(where, key) for where, key in found if key not in SETTINGS]
    assert unknown == []


@pytest.mark.parametrize(("component", "port"), sorted(METRICS_PORTS.items()))
def test_metrics_ports_agree(component: str, port: int) -> None:
    service = compose()["services"][component]
    workload = next(
        obj
        for obj in workloads()
        if obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        == component
    )
    container = next(
        c for c in pod_spec(workload)["containers"] if c["name"] == component
    )
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"]
        for job in scrape["scrape_configs"]
    }
    metrics_policy = k8s_one("NetworkPolicy", "systerns-metrics-ingress")
    policy_ports = {p["port"] for p in metrics_policy["spec"]["ingress"][0]["ports"]}
    dockerfile_env = " ".join(
        v for i, v in instructions(DOCKER_DIR / f"{component}.Dockerfile") if i == "ENV"
    )

    assert int(service["environment"]["SYSTERNS_METRICS_PORT"]) == port
    assert int(env_of(container)["SYSTERNS_METRICS_PORT"]) == port
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    assert targets[f"systerns-{component}"] == [f"{component}:{port}"]
    assert port in policy_ports
    assert f"SYSTERNS_METRICS_PORT={port}" in dockerfile_env


# ------------------------------------------------------------- topics


def test_topic_table_has_the_pipeline_topics_and_retention() -> None:
    table = topic_table()

    assert tuple(table) == TOPICS
    assert table["systerns.events"][1] == 7 * DAY_MS
    assert table["systerns.alerts"][1] == 30 * DAY_MS
    assert table["systerns.events"][0] >= 12
    assert table["systerns.verdicts"][0] == table["systerns.events"][0]


def test_topics_run_the_shared_script() -> None:
    topics = compose()["services"]["topics"]
    job = k8s_one("Job", "systerns-topics")
    container = pod_spec(job)["containers"][0]
    script_volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "script")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "script")

    assert (
        f"../kafka/{TOPICS_SCRIPT.name}:{topics['entrypoint'][1]}:ro"
        in topics["volumes"]
    )
    assert script_volume["configMap"]["name"] == "systerns-topics-script"
    assert container["command"][-1] == f"{mount['mountPath']}/{TOPICS_SCRIPT.name}"
