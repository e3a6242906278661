"""The Helm chart, checked offline: lint, schema validation of every rendered object, the gateway
config it produces, the checked-in renders in deploy/rendered/, and values the schema must reject."""

from __future__ import annotations

import copy
import difflib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from tests.deploy.k8s_support import (
    CHART,
    RENDER_SH,
    REPO,
    VALUES_FILES,
    find,
    gateway_config,
    helm,
    render,
    template_args,
    validation_errors,
    values_id,
)

VALUES = pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    return {values_id(v): render(v) for v in VALUES_FILES}


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@VALUES
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", "./crowd-gateway"] + ([] if values is None else ["--values", str(values)])
    proc = helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@VALUES
def test_every_rendered_object_matches_its_schema(values: Path | None, renders: dict) -> None:
    objects = renders[values_id(values)]
    errors = [err for obj in objects for err in validation_errors(obj)]
    assert not errors, "\n".join(errors)


def test_validation_catches_broken_objects(renders: dict) -> None:
    """The schema checks above can fail: a typo in a core kind and in each CRD kind is reported."""
    objects = renders["default"]
    deployment = copy.deepcopy(find(objects, "Deployment", "crowd-gateway")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    monitor = copy.deepcopy(find(objects, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    rule = copy.deepcopy(find(objects, "PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["recrod"] = rule["spec"]["groups"][0]["rules"][0].pop("record")
    pod_monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"},
                   "spec": {"selector": {}, "podMetricsEndpoints": [{"portNumber": "http"}]}}
    cases = [(deployment, "paht"), (monitor, "interval"), (rule, "recrod"), (pod_monitor, "portNumber")]
    for broken, mentions in cases:
        errors = validation_errors(broken)
        assert errors and mentions in "".join(errors), (broken["kind"], errors)


@VALUES
def test_rendered_gateway_config_is_accepted_by_the_gateway(values: Path | None, renders: dict) -> None:
    config = parse_config(gateway_config(renders[values_id(values)]), source="rendered ConfigMap")
    assert config.gateway.api_keys_env == "CROWD_GATEWAY_API_KEYS"
    assert config.store.redis_url_env == "CROWD_GATEWAY_REDIS_URL"


@VALUES
def test_members_are_wired_to_their_services(values: Path | None, renders: dict) -> None:
    """Each in-cluster member's base_url names its own vLLM Service and port; external ones keep their URL."""
    objects = renders[values_id(values)]
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    members = (yaml.safe_load(values.read_text()) if values else {}).get("members", chart_values["members"])
    config_members = {m["name"]: m for m in gateway_config(objects)["members"]}
    assert set(config_members) == {m["name"] for m in members}
    for member in members:
        wired = config_members[member["name"]]
        if "url" in member:
            assert wired["base_url"] == member["url"]
            assert not find(objects, "Deployment", f"crowd-gateway-vllm-{member['name']}")
            continue
        name = f"crowd-gateway-vllm-{member['name']}"
        (service,) = find(objects, "Service", name)
        (deployment,) = find(objects, "Deployment", name)
        assert wired["base_url"] == f"http://{name}:{service['spec']['ports'][0]['port']}/v1"
        assert wired["model"] == member.get("servedName", member["name"])
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        served = container["args"][container["args"].index("--served-model-name") + 1]
        assert served == wired["model"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model loading needs minutes"


VARIANTS = {
    "memory store": {"redis": {"mode": "none"}},
    "redis with password": {"redis": {"auth": {"existingSecret": "redis-auth"}, "persistence": {"enabled": False}}},
    "one pod, four workers": {"gateway": {"autoscaling": {"enabled": False}, "replicas": 1, "workers": 4}},
    "cpu member, emptyDir cache": {"vllm": {"gpus": 0, "cache": {"type": "emptyDir"}}},
    "existing cache claim": {"members": [{"name": "smol", "model": "m", "cache": {"type": "existingClaim",
                                                                           "existingClaim": "models"}}],
                             "gateway": {"config": {"ensembles": [{"name": "crowd", "members": ["smol"]}]}}},
    "pod monitors": {"monitoring": {"gateway": {"monitor": "PodMonitor"}, "vllm": {"monitor": "PodMonitor"}}},
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_value_variants_render_valid_objects_and_config(tmp_path: Path, values: dict[str, Any]) -> None:
    """The template branches the examples do not take still produce valid objects and a valid config."""
    objects = render(write_values(tmp_path, values))
    errors = [err for obj in objects for err in validation_errors(obj)]
    assert not errors, "\n".join(errors)
    config = parse_config(gateway_config(objects))
    (gateway,) = find(objects, "Deployment", "crowd-gateway")
    pod = gateway["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
    if values.get("redis", {}).get("mode") == "none":
        assert config.store.backend == "memory" and "CROWD_GATEWAY_REDIS_URL" not in env
        assert not find(objects, "StatefulSet")
    if values.get("redis", {}).get("auth"):
        assert env["CROWD_GATEWAY_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@crowd-gateway-redis:6379/0"
        assert list(env).index("REDIS_PASSWORD") < list(env).index("CROWD_GATEWAY_REDIS_URL")  # $(VAR) order
    if values.get("gateway", {}).get("workers"):
        assert pod["containers"][0]["args"][-2:] == ["--workers", "4"]
        assert not find(objects, "PodDisruptionBudget", "crowd-gateway")
        assert not find(objects, "HorizontalPodAutoscaler")


def test_gpu_pool_requests_gpus_and_splits_the_big_model(renders: dict) -> None:
    objects = renders["gpu-pool"]
    (qwen,) = find(objects, "Deployment", "crowd-gateway-vllm-qwen")
    container = qwen["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "2"
    volumes = {v["name"]: v for v in qwen["spec"]["template"]["spec"]["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "crowd-gateway-vllm-qwen-cache"
    (pvc,) = find(objects, "PersistentVolumeClaim", "crowd-gateway-vllm-qwen-cache")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"


def test_gateway_pod_probes_secrets_and_redis(renders: dict) -> None:
    objects = renders["default"]
    (deployment,) = find(objects, "Deployment", "crowd-gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    command = container["command"] + container["args"][:3]
    assert command == ["crowd-gateway", "serve", "--config", "/etc/crowd-gateway/config.yaml"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CROWD_GATEWAY_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@crowd-gateway-redis:6379/0"
    assert find(objects, "StatefulSet", "crowd-gateway-redis")
    assert find(objects, "HorizontalPodAutoscaler", "crowd-gateway")
    assert find(objects, "PodDisruptionBudget", "crowd-gateway")
    external = renders["external-members"]
    (deployment,) = find(external, "Deployment", "crowd-gateway")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CROWD_GATEWAY_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "crowd-gateway-api-keys"
    member_key = env["CROWD_MEMBER_GPT_MINI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert member_key == {"name": "upstream-keys", "key": "openai"}
    assert env["CROWD_GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "redis-url"
    assert not find(external, "StatefulSet")


def test_created_api_key_secret_is_used(tmp_path: Path) -> None:
    objects = render(write_values(tmp_path, {"gateway": {"apiKeys": {"keys": ["k1", "k2"]}}}))
    (secret,) = find(objects, "Secret", "crowd-gateway-api-keys")
    assert secret["data"]["api-keys"] == "azEsazI="  # base64 of "k1,k2"
    (deployment,) = find(objects, "Deployment", "crowd-gateway")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CROWD_GATEWAY_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "crowd-gateway-api-keys"


def test_config_change_rolls_the_gateway_pods(tmp_path: Path, renders: dict) -> None:
    def checksum(objects: list[dict[str, Any]]) -> str:
        (deployment,) = find(objects, "Deployment", "crowd-gateway")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    changed = render(write_values(tmp_path, {"gateway": {"config": {"gateway": {"max_body_bytes": 2048}}}}))
    assert checksum(changed) != checksum(renders["default"])


def test_monitoring_objects_only_when_the_cluster_has_the_crds(renders: dict) -> None:
    with_crds = {o["kind"] for o in renders["default"]}
    assert {"ServiceMonitor", "PrometheusRule"} <= with_crds
    without = render(crds=False)
    kinds = {o["kind"] for o in without}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert any(o["metadata"]["name"] == "crowd-gateway-dashboard" for o in find(without, "ConfigMap"))


def test_monitors_set_the_job_and_member_labels_the_rules_use(renders: dict) -> None:
    monitors = {o["metadata"]["name"]: o for o in renders["default"] if o["kind"] == "ServiceMonitor"}
    jobs = {}
    for name, monitor in monitors.items():
        relabel = monitor["spec"]["endpoints"][0]["relabelings"]
        jobs[name] = next(r["replacement"] for r in relabel if r["targetLabel"] == "job")
    assert jobs == {"crowd-gateway-gateway": "crowd-gateway", "crowd-gateway-vllm": "crowd-gateway-vllm"}
    vllm_relabel = monitors["crowd-gateway-vllm"]["spec"]["endpoints"][0]["relabelings"]
    member_label = {"sourceLabels": ["__meta_kubernetes_pod_label_crowd_gateway_member"], "targetLabel": "member"}
    assert member_label in vllm_relabel
    (pod_monitor,) = find(renders["external-members"], "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_prometheus_rule_is_the_rules_file(renders: dict) -> None:
    (rule,) = find(renders["default"], "PrometheusRule")
    source = yaml.safe_load((REPO / "deploy/prometheus/crowd-gateway-rules.yaml").read_text())
    assert rule["spec"] == source


def test_dashboard_config_map_is_the_dashboard_file_with_a_release_uid(tmp_path: Path, renders: dict) -> None:
    """The dashboard file as is, except uid and title (and file name): per release unless set."""
    (cm,) = find(renders["default"], "ConfigMap", "crowd-gateway-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = json.loads((REPO / "deploy/grafana/crowd-gateway.json").read_text())
    (key,) = cm["data"]
    shipped = json.loads(cm["data"][key])
    assert key == "crowd-gateway-crowd-crowd-gateway.json"
    assert shipped.pop("uid") == "crowd-gateway-crowd-crowd-gateway"
    assert shipped.pop("title") == "Crowd Gateway (crowd/crowd-gateway)"
    assert shipped == {k: v for k, v in source.items() if k not in {"uid", "title"}}
    values = {"monitoring": {"grafanaDashboard": {"uid": "crowd-prod", "title": "Crowd (prod)"}}}
    (cm,) = find(render(write_values(tmp_path, values)), "ConfigMap", "crowd-gateway-dashboard")
    shipped = json.loads(cm["data"]["crowd-prod.json"])
    assert (shipped["uid"], shipped["title"]) == ("crowd-prod", "Crowd (prod)")


def test_chart_copies_match_their_sources() -> None:
    pairs = {
        "deploy/prometheus/crowd-gateway-rules.yaml": "helm/crowd-gateway/files/crowd-gateway-rules.yaml",
        "deploy/grafana/crowd-gateway.json": "helm/crowd-gateway/files/crowd-gateway-dashboard.json",
    }
    for source, chart_copy in pairs.items():
        same = (REPO / source).read_bytes() == (REPO / chart_copy).read_bytes()
        assert same, f"{chart_copy} differs from {source}: run deploy/render.sh"


def test_checked_in_renders_are_current(tmp_path: Path) -> None:
    """deploy/rendered/ is what the chart renders now: a template change must come with its diff."""
    proc = subprocess.run([str(RENDER_SH), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    checked_in = REPO / "deploy" / "rendered"
    fresh = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert fresh == sorted(p.name for p in checked_in.glob("*.yaml")), "run deploy/render.sh"
    for name in fresh:
        old, new = (checked_in / name).read_text(), (tmp_path / name).read_text()
        if old != new:
            diff = "".join(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), f"deploy/rendered/{name}", "now", n=2))
            pytest.fail(f"deploy/rendered/{name} is stale; run deploy/render.sh. Diff:\n{diff[:4000]}")


EXTERNAL = {"name": "x", "model": "m", "url": "https://x/v1"}
BROKEN_VALUES = {
    "string GPU count": ({"vllm": {"gpus": "1"}}, "gpus"),
    "member GPU count as a word": ({"members": [{"name": "a", "model": "m", "gpus": "two"}]}, "gpus"),
    "unknown top-level key": ({"gateways": {}}, "gateways"),
    "member name not a DNS label": ({"members": [{"name": "Smol_A", "model": "m"}]}, "name"),
    "external member without dialect": ({"members": [{**EXTERNAL, "gateway": {}}]}, "dialect"),
    "external member with a GPU": ({"members": [{**EXTERNAL, "gpus": 1, "gateway": {"dialect": "vllm"}}]}, "members.0"),
    "unknown dialect": ({"members": [{"name": "x", "model": "m", "gateway": {"dialect": "grpc"}}]}, "dialect"),
    "external redis without url": ({"redis": {"mode": "external"}}, "external"),
    "monitor kind typo": ({"monitoring": {"gateway": {"monitor": "ServiceMonitors"}}}, "monitor"),
    "chart-owned config key": ({"gateway": {"config": {"gateway": {"api_keys_env": "X"}}}}, "api_keys_env"),
    "GPU resource without a domain": ({"vllm": {"gpuResourceName": "gpu"}}, "gpuResourceName"),
    "external member with a runtime class": ({"members": [{**EXTERNAL, "runtimeClassName": "nvidia",
                                                           "gateway": {"dialect": "vllm"}}]}, "members.0"),
    "ingress without hosts": ({"gateway": {"ingress": {"enabled": True}}}, "hosts"),
    "HTTPRoute without parents": ({"gateway": {"httpRoute": {"enabled": True}}}, "parentRefs"),
    "dashboard uid over 40 characters": ({"monitoring": {"grafanaDashboard": {"uid": "x" * 41}}}, "uid"),
}


@pytest.mark.parametrize("values,mentions", BROKEN_VALUES.values(), ids=BROKEN_VALUES.keys())
def test_schema_rejects_broken_values(tmp_path: Path, values: dict[str, Any], mentions: str) -> None:
    """helm install runs the same schema check as helm template: a wrong value never reaches the cluster."""
    proc = helm(*template_args(write_values(tmp_path, values)), check=False)
    assert proc.returncode != 0, f"accepted broken values {values}"
    assert "schema" in proc.stderr and mentions in proc.stderr, proc.stderr


def test_ensemble_naming_an_unknown_member_fails(tmp_path: Path) -> None:
    values = {"gateway": {"config": {"ensembles": [{"name": "crowd", "members": ["smol", "ghost"]}]}}}
    proc = helm(*template_args(write_values(tmp_path, values)), check=False)
    assert proc.returncode != 0
    assert 'names member "ghost", which is not in members' in proc.stderr, proc.stderr
