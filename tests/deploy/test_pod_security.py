"""Every pod the chart renders passes the Pod Security Standards "restricted" profile, for the default
values, each example and the options that add containers or volumes; and the checker itself catches
each kind of violation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.k8s_support import (
    VALUES_FILES,
    find,
    pod_templates,
    render,
    restricted_violations,
    validation_errors,
    values_id,
)

# Adds an init container (without a securityContext) and an extra volume to every pod that takes them.
WITH_EXTRAS = {
    "gateway": {
        "initContainers": [{"name": "wait", "image": "busybox:1.36", "command": ["true"]}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True}],
    },
    "vllm": {
        "initContainers": [{"name": "fetch", "image": "busybox:1.36", "command": ["true"]}],
        "extraVolumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}}],
        "extraVolumeMounts": [{"name": "weights", "mountPath": "/weights"}],
    },
}


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    extras = tmp_path_factory.mktemp("values") / "extras.yaml"
    extras.write_text(yaml.safe_dump(WITH_EXTRAS))
    out = {values_id(v): render(v) for v in VALUES_FILES}
    out["init-containers-and-volumes"] = render(extras)
    return out


CASES = [values_id(v) for v in VALUES_FILES] + ["init-containers-and-volumes"]


@pytest.mark.parametrize("name", CASES)
def test_every_rendered_pod_passes_restricted(name: str, renders: dict) -> None:
    objects = renders[name]
    pods = dict(pod_templates(objects))
    workloads = {f"{o['kind']}/{o['metadata']['name']}" for o in objects if o["kind"] in {"Deployment", "StatefulSet"}}
    assert set(pods) == workloads and "Deployment/crowd-gateway" in pods
    violations = [f"{where}: {err}" for where, pod in pods.items() for err in restricted_violations(pod)]
    assert not violations, "\n".join(violations)
    errors = [err for obj in objects for err in validation_errors(obj)]
    assert not errors, "\n".join(errors)


def test_the_pods_checked_include_vllm_redis_and_init_containers(renders: dict) -> None:
    """The default render has a vLLM pod per member and Redis; the extras render has init containers."""
    pods = dict(pod_templates(renders["default"]))
    assert {"Deployment/crowd-gateway-vllm-smol", "Deployment/crowd-gateway-vllm-qwen",
            "StatefulSet/crowd-gateway-redis"} <= set(pods)
    extras = dict(pod_templates(renders["init-containers-and-volumes"]))
    assert extras["Deployment/crowd-gateway"]["initContainers"][0]["name"] == "wait"
    assert extras["Deployment/crowd-gateway-vllm-smol"]["initContainers"][0]["name"] == "fetch"


def test_read_only_root_with_writable_scratch(renders: dict) -> None:
    """Each container's root filesystem is read-only; what it writes goes to emptyDirs or its volumes."""
    for where, pod in pod_templates(renders["default"]):
        volumes = {v["name"]: v for v in pod["volumes"]} if "volumes" in pod else {}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            if container["name"] == "vllm":
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert "emptyDir" in volumes[mounts[env["HOME"]]] and "emptyDir" in volumes[mounts["/tmp"]]
                assert mounts[env["HF_HOME"]] == "model-cache" and pod["securityContext"]["fsGroup"]
            if container["name"] == "gateway":
                assert "emptyDir" in volumes[mounts["/tmp"]]


def test_an_init_container_keeps_its_own_security_context(tmp_path: Path) -> None:
    own = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
           "seccompProfile": {"type": "Localhost", "localhostProfile": "init.json"}}
    values = {"gateway": {"initContainers": [{"name": "x", "image": "i", "securityContext": own}]}}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    (deployment,) = find(render(path), "Deployment", "crowd-gateway")
    assert deployment["spec"]["template"]["spec"]["initContainers"][0]["securityContext"] == own


def _break(pod: dict[str, Any], change: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    container = pod["containers"][0]
    sc = container["securityContext"]
    if change == "hostNetwork":
        pod["hostNetwork"] = True
    elif change == "hostPath":
        pod["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})
    elif change == "privileged":
        sc["privileged"] = True
    elif change == "allowPrivilegeEscalation":
        del sc["allowPrivilegeEscalation"]
    elif change == "capabilities":
        sc["capabilities"] = {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "SYS_ADMIN"]}
    elif change == "runAsNonRoot":
        del pod["securityContext"]["runAsNonRoot"]
    elif change == "runAsUser":
        sc["runAsUser"] = 0
    elif change == "seccompProfile":
        pod["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    elif change == "hostPort":
        container["ports"][0]["hostPort"] = 8080
    elif change == "sysctl":
        pod["securityContext"]["sysctls"] = [{"name": "kernel.msgmax", "value": "1"}]
    return pod


BREAKS = {
    "hostNetwork": "hostNetwork", "hostPath": "hostPath", "privileged": "privileged",
    "allowPrivilegeEscalation": "allowPrivilegeEscalation", "capabilities": "SYS_ADMIN",
    "runAsNonRoot": "runAsNonRoot", "runAsUser": "runAsUser is 0", "seccompProfile": "Unconfined",
    "hostPort": "hostPort", "sysctl": "kernel.msgmax",
}


@pytest.mark.parametrize("change,mentions", BREAKS.items(), ids=BREAKS.keys())
def test_checker_reports_each_violation(change: str, mentions: str, renders: dict) -> None:
    (deployment,) = find(renders["default"], "Deployment", "crowd-gateway-vllm-smol")
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    errors = restricted_violations(_break(pod, change))
    assert errors and mentions in "\n".join(errors), errors
