"""Deployment files point at real things: probe paths are app routes, ports agree everywhere,
every FLOWSERVE_* variable is a settings field, secret names and keys match, the Dockerfile
stays in the classic-builder subset and its runtime stage carries no torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowserve.service.app import create_app
from flowserve.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
PREFIX = "FLOWSERVE_"


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    kustomization = _load(DEPLOY / "kustomization.yaml")[0]
    by_kind: dict[str, dict[str, Any]] = {}
    for rel in kustomization["resources"]:
        path = DEPLOY / rel
        assert path.is_file(), f"kustomization.yaml lists {rel}, which does not exist"
        for doc in _load(path):
            assert doc["kind"] not in by_kind, f"two {doc['kind']} objects"
            by_kind[doc["kind"]] = doc
    return by_kind


@pytest.fixture(scope="module")
def container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _app_paths() -> set[str]:
    # FastAPI >= 0.16x keeps included routers lazily; the OpenAPI document lists every route.
    return set(create_app(ServiceSettings()).openapi()["paths"])


def _setting_fields() -> set[str]:
    return set(ServiceSettings.model_fields)


def _dockerfile_expose() -> list[int]:
    return [int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", DOCKERFILE.read_text(), re.M)]


def test_kustomization_lists_every_kind(manifests: dict[str, dict[str, Any]]) -> None:
    assert set(manifests) == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }  # no Secret: one with known keys would be applied as is


def test_probes_hit_real_routes_on_the_container_port(container: dict[str, Any]) -> None:
    paths = _app_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths, f"{probe} path {get['path']} is not a route of the app"
        port = named.get(get["port"], get["port"])
        assert port == container["ports"][0]["containerPort"]


def test_ports_agree_with_dockerfile_and_settings(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    default_port = ServiceSettings.model_fields["port"].default
    assert _dockerfile_expose() == [default_port] == [container["ports"][0]["containerPort"]]
    config = manifests["ConfigMap"]["data"]
    assert int(config["FLOWSERVE_PORT"]) == default_port
    assert config["FLOWSERVE_HOST"] == "0.0.0.0"
    service_port = manifests["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] in {p["name"] for p in container["ports"]}
    annotations = manifests["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == default_port
    assert annotations["prometheus.io/path"] in _app_paths()


def _env_names(manifests: dict[str, dict[str, Any]], container: dict[str, Any]) -> set[str]:
    names = set(manifests["ConfigMap"]["data"]) | {e["name"] for e in container.get("env", [])}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for svc in compose["services"].values():
        names |= set(svc.get("environment", {}))
    for line in re.findall(r"^ENV\s+(.*?)(?<!\\)$", DOCKERFILE.read_text(), re.M | re.S):
        names |= set(re.findall(r"(FLOWSERVE_[A-Z_]+)=", line))
    return {n for n in names if n.startswith(PREFIX)}


def test_every_flowserve_variable_is_a_settings_field(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    names = _env_names(manifests, container)
    assert {"FLOWSERVE_PORT", "FLOWSERVE_MODEL_ROOT", "FLOWSERVE_API_KEYS"} <= names
    unknown = sorted(n for n in names if n[len(PREFIX) :].lower() not in _setting_fields())
    assert not unknown, f"not fields of ServiceSettings: {unknown}"
    # And the values parse: the ConfigMap builds valid settings.
    env = {k: str(v) for k, v in manifests["ConfigMap"]["data"].items()}
    settings = ServiceSettings(**{k[len(PREFIX) :].lower(): v for k, v in env.items()})
    assert settings.workers == 1 and str(settings.model_root) == "/models"


def test_api_keys_come_from_files_of_a_secret_you_create(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    env = {e["name"]: e["value"] for e in container["env"]}
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for var, key in (
        ("FLOWSERVE_API_KEY_FILE", "api-keys"),
        ("FLOWSERVE_ADMIN_KEY_FILE", "admin-keys"),
    ):
        path = Path(env[var])
        assert path.name == key
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "flowserve-keys" and not secret.get("optional", False)
    # never in plain config or argv, and no key values anywhere in deploy/
    assert not {"FLOWSERVE_API_KEYS", "FLOWSERVE_ADMIN_KEYS"} & set(manifests["ConfigMap"]["data"])
    assert "args" not in container and "command" not in container
    readme = (DEPLOY / "README.md").read_text()
    assert "kubectl create secret generic flowserve-keys" in readme


def test_shutdown_drains_within_the_grace_period(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    config = manifests["ConfigMap"]["data"]
    settings = ServiceSettings(drain_s=config["FLOWSERVE_DRAIN_S"])
    needed = float(command[1]) + settings.drain_s + float(config["FLOWSERVE_SHUTDOWN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > needed
    pdb = manifests["PodDisruptionBudget"]
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] >= 1


def test_models_volume_and_security(
    manifests: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False  # no injected FLOWSERVE_PORT=tcp://...
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.findall(r"^USER\s+(\d+)", DOCKERFILE.read_text(), re.M)
    assert user and all(int(u.split(":")[0]) == pod["securityContext"]["runAsUser"] for u in user)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    model_root = manifests["ConfigMap"]["data"]["FLOWSERVE_MODEL_ROOT"]
    models = next(m for m in mounts.values() if m["mountPath"] == model_root)
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == manifests["PersistentVolumeClaim"]["metadata"]["name"]
    assert any(m["mountPath"] == "/tmp" for m in mounts.values())  # writable scratch
    assert set(mounts) == set(volumes)
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def test_hpa_targets_the_deployment_on_cpu(manifests: dict[str, dict[str, Any]]) -> None:
    hpa = manifests["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "flowserve")
    assert manifests["Deployment"]["metadata"]["name"] == "flowserve"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    selector = manifests["Service"]["spec"]["selector"]
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_dockerfile_is_classic_builder_and_torch_free() -> None:
    # Instructions only: comments may name what is not used.
    text = "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    assert not re.search(r"RUN\s+--mount|COPY\s+--chmod|<<\s*['\"]?\w+", text)
    stages: dict[str, str] = {}
    for chunk in re.split(r"^FROM\s+", text, flags=re.M)[1:]:
        words = chunk.split()
        stages[words[2] if len(words) > 2 and words[1].upper() == "AS" else words[0]] = chunk
    assert list(stages)[-1] == "runtime"  # the default target serves
    # runtime <- base <- python:3.11-slim
    assert stages["runtime"].startswith("base AS runtime")
    assert stages["base"].startswith("${PYTHON_IMAGE} AS base")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    for name in ("builder", "base", "runtime"):
        assert "torch" not in stages[name], f"stage {name} mentions torch"
    assert '".[serve]"' in stages["builder"]
    assert "HEALTHCHECK" in stages["runtime"] and "/healthz" in stages["runtime"]
    assert "/healthz" in _app_paths()
    assert "FLOWSERVE_HOST=0.0.0.0" in stages["base"]
    assert "train" in stages and "TORCH_SPEC=\n" in stages["train-builder"]  # opt-in
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in dockerignore and ".git" in dockerignore
