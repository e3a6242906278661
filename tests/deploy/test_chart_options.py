"""The chart's deployment options, rendered offline: runtime and priority classes, the GPU resource
name, extra volumes and init containers, extraObjects, Ingress and HTTPRoute, NetworkPolicies, the
Redis password, PodDisruptionBudgets, and pod templates that a chart version bump leaves alone."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from tests.deploy.k8s_support import CHART, find, gateway_config, render, validation_errors

MEMBERS = [
    {"name": "smol", "model": "m1"},
    {"name": "qwen", "model": "m2", "gpuResourceName": "nvidia.com/mig-1g.10gb", "runtimeClassName": "kata-gpu",
     "priorityClassName": "crowd-big", "podDisruptionBudget": {"minAvailable": 1},
     "extraVolumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}}],
     "extraVolumeMounts": [{"name": "weights", "mountPath": "/weights", "readOnly": True}]},
]
ENSEMBLES = {"config": {"ensembles": [{"name": "crowd", "members": ["smol", "qwen"]}]}}


def rendered(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    objects = render(path)
    errors = [e for o in objects if o["kind"] != "HTTPRoute" for e in validation_errors(o)]
    assert not errors, "\n".join(errors)
    return objects


def pod(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = find(objects, kind, name)
    return obj["spec"]["template"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_classes_gpu_resource_and_extra_volumes_default_and_per_member(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {
        "gateway": {**ENSEMBLES, "runtimeClassName": "gvisor", "priorityClassName": "crowd-gateway"},
        "vllm": {"gpuResourceName": "amd.com/gpu", "runtimeClassName": "nvidia", "priorityClassName": "crowd-gpu"},
        "members": MEMBERS,
    })
    gateway = pod(objects, "Deployment", "crowd-gateway")["spec"]
    assert (gateway["runtimeClassName"], gateway["priorityClassName"]) == ("gvisor", "crowd-gateway")
    smol = pod(objects, "Deployment", "crowd-gateway-vllm-smol")["spec"]
    assert (smol["runtimeClassName"], smol["priorityClassName"]) == ("nvidia", "crowd-gpu")
    assert smol["containers"][0]["resources"]["limits"]["amd.com/gpu"] == 1
    qwen = pod(objects, "Deployment", "crowd-gateway-vllm-qwen")["spec"]
    assert (qwen["runtimeClassName"], qwen["priorityClassName"]) == ("kata-gpu", "crowd-big")
    resources = qwen["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/mig-1g.10gb"] == resources["limits"]["nvidia.com/mig-1g.10gb"] == 1
    assert "amd.com/gpu" not in resources["limits"] and "nvidia.com/gpu" not in resources["limits"]
    assert {"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}} in qwen["volumes"]
    assert {"name": "weights", "mountPath": "/weights", "readOnly": True} in qwen["containers"][0]["volumeMounts"]
    assert "weights" not in {v["name"] for v in smol["volumes"]}


def test_gateway_extra_volumes_and_init_containers(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {"gateway": {
        "initContainers": [{"name": "migrate", "image": "crowd-gateway:0.1.0", "command": ["true"]}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True}],
    }})
    spec = pod(objects, "Deployment", "crowd-gateway")["spec"]
    (init,) = spec["initContainers"]
    assert init["name"] == "migrate"
    assert init["securityContext"] == spec["containers"][0]["securityContext"]  # the default was applied
    assert {"name": "ca", "configMap": {"name": "ca-bundle"}} in spec["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True} in spec["containers"][0]["volumeMounts"]


def test_extra_objects_are_rendered_with_tpl(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {"extraObjects": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra"},
         "data": {"service": '{{ include "crowd-gateway.fullname" . }}'}},
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{ .Release.Name }}-batch\n",
    ]})
    (cm,) = find(objects, "ConfigMap", "crowd-gateway-extra")
    assert cm["data"] == {"service": "crowd-gateway"}
    assert find(objects, "ServiceAccount", "crowd-gateway-batch")


def test_ingress_and_http_route_send_traffic_to_the_gateway_service(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {"gateway": {
        "ingress": {"enabled": True, "className": "nginx", "hosts": [{"host": "crowd.example.com"}],
                    "tls": [{"secretName": "crowd-tls", "hosts": ["crowd.example.com"]}]},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "shared", "namespace": "gateway-infra"}],
                      "hostnames": ["crowd.example.com"]},
    }})
    (service,) = find(objects, "Service", "crowd-gateway")
    (ingress,) = find(objects, "Ingress", "crowd-gateway")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "crowd.example.com"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"] == {"name": "crowd-gateway", "port": {"name": "http"}}
    assert service["spec"]["ports"][0]["name"] == "http"
    # No HTTPRoute schema is vendored (it is a CRD), so its shape is checked here.
    (route,) = find(objects, "HTTPRoute", "crowd-gateway")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "shared", "namespace": "gateway-infra"}]
    assert route["spec"]["hostnames"] == ["crowd.example.com"]
    (route_rule,) = route["spec"]["rules"]
    assert route_rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert route_rule["backendRefs"] == [{"name": "crowd-gateway", "port": service["spec"]["ports"][0]["port"]}]
    assert not {"Ingress", "HTTPRoute", "NetworkPolicy"} & {o["kind"] for o in render()}  # all off by default


def test_network_policies_isolate_vllm_and_redis(tmp_path: Path) -> None:
    clients = [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]
    objects = rendered(tmp_path, {"networkPolicy": {"enabled": True, "gateway": {"from": clients}}})
    policies = {p["metadata"]["name"]: p["spec"] for p in find(objects, "NetworkPolicy")}
    assert set(policies) == {"crowd-gateway", "crowd-gateway-vllm", "crowd-gateway-redis"}
    gateway_labels = pod(objects, "Deployment", "crowd-gateway")["metadata"]["labels"]
    metrics_from = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["metricsFrom"]
    targets = {
        "crowd-gateway": [pod(objects, "Deployment", "crowd-gateway")],
        "crowd-gateway-vllm": [pod(objects, "Deployment", f"crowd-gateway-vllm-{m}") for m in ("smol", "qwen")],
        "crowd-gateway-redis": [pod(objects, "StatefulSet", "crowd-gateway-redis")],
    }
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress"]
        for template in targets[name]:
            assert matches(spec["podSelector"]["matchLabels"], template["metadata"]["labels"]), name
        others = [p for n, p in policies.items() if n != name]
        for template in targets[name]:
            assert not any(matches(o["podSelector"]["matchLabels"], template["metadata"]["labels"]) for o in others)
    assert [r["from"] for r in policies["crowd-gateway"]["ingress"]] == [clients, metrics_from]
    (vllm_rule,) = policies["crowd-gateway-vllm"]["ingress"]
    gateway_peer, *prometheus = vllm_rule["from"]
    assert matches(gateway_peer["podSelector"]["matchLabels"], gateway_labels) and prometheus == metrics_from
    (redis_rule,) = policies["crowd-gateway-redis"]["ingress"]
    assert redis_rule["from"] == [gateway_peer] and redis_rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    # Without `gateway.from`, clients reach the gateway from anywhere (one rule without `from`).
    open_gateway = find(rendered(tmp_path, {"networkPolicy": {"enabled": True}}), "NetworkPolicy", "crowd-gateway")
    assert open_gateway[0]["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_redis_has_a_generated_password_by_default(tmp_path: Path) -> None:
    objects = render()
    (secret,) = find(objects, "Secret", "crowd-gateway-redis-auth")
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert len(password) == 32 and password.isalnum()
    assert base64.b64decode(find(render(), "Secret", "crowd-gateway-redis-auth")[0]["data"]["redis-password"]) \
        != password.encode(), "each fresh install gets its own password"
    ref = {"secretKeyRef": {"name": "crowd-gateway-redis-auth", "key": "redis-password"}}
    redis = pod(objects, "StatefulSet", "crowd-gateway-redis")["spec"]["containers"][0]
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert {e["name"]: e["valueFrom"] for e in redis["env"]} == {"REDIS_PASSWORD": ref, "REDISCLI_AUTH": ref}
    gateway = pod(objects, "Deployment", "crowd-gateway")["spec"]["containers"][0]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"] == ref
    assert env["CROWD_GATEWAY_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@crowd-gateway-redis:6379/0"
    # Your own Secret: nothing generated, both sides read it.
    mine = rendered(tmp_path, {"redis": {"auth": {"existingSecret": "redis-auth", "existingSecretKey": "pw"}}})
    assert not find(mine, "Secret", "crowd-gateway-redis-auth")
    gateway = pod(mine, "Deployment", "crowd-gateway")["spec"]["containers"][0]
    assert {e["name"]: e for e in gateway["env"]}["REDIS_PASSWORD"]["valueFrom"] == \
        {"secretKeyRef": {"name": "redis-auth", "key": "pw"}}
    # Turned off: no Secret, no password anywhere.
    off = rendered(tmp_path, {"redis": {"auth": {"enabled": False}}})
    assert not find(off, "Secret", "crowd-gateway-redis-auth")
    assert "--requirepass" not in pod(off, "StatefulSet", "crowd-gateway-redis")["spec"]["containers"][0]["args"]
    env = {e["name"]: e for e in pod(off, "Deployment", "crowd-gateway")["spec"]["containers"][0]["env"]}
    assert "REDIS_PASSWORD" not in env and env["CROWD_GATEWAY_REDIS_URL"]["value"] == "redis://crowd-gateway-redis:6379/0"


def test_redis_secret_template_prefers_the_live_password() -> None:
    """A static check of the template, not a render: `lookup` needs an API server and returns nothing
    offline. The value read back from the cluster is used before a new one would be generated."""
    text = (CHART / "templates" / "redis-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert text.index("index $live.data $key") < text.index("randAlphaNum 32")


def test_pod_disruption_budgets_for_vllm_and_a_scaled_gateway(tmp_path: Path) -> None:
    objects = rendered(tmp_path, {"gateway": ENSEMBLES, "members": MEMBERS})
    budgets = {p["metadata"]["name"]: p["spec"] for p in find(objects, "PodDisruptionBudget")}
    assert set(budgets) == {"crowd-gateway", "crowd-gateway-vllm-smol", "crowd-gateway-vllm-qwen"}
    assert budgets["crowd-gateway-vllm-smol"]["maxUnavailable"] == 1
    assert budgets["crowd-gateway-vllm-qwen"] == {
        "minAvailable": 1, "selector": budgets["crowd-gateway-vllm-qwen"]["selector"]}
    for member in ("smol", "qwen"):
        name = f"crowd-gateway-vllm-{member}"
        labels = pod(objects, "Deployment", name)["metadata"]["labels"]
        assert matches(budgets[name]["selector"]["matchLabels"], labels)
        other = pod(objects, "Deployment", f"crowd-gateway-vllm-{'qwen' if member == 'smol' else 'smol'}")
        assert not matches(budgets[name]["selector"]["matchLabels"], other["metadata"]["labels"])
    single = rendered(tmp_path, {"gateway": {"autoscaling": {"enabled": False}, "replicas": 1},
                                 "vllm": {"podDisruptionBudget": {"enabled": False}}})
    assert not find(single, "PodDisruptionBudget")


@pytest.fixture()
def bumped_chart(tmp_path: Path) -> Path:
    """A copy of the chart with another version and appVersion."""
    chart = tmp_path / "crowd-gateway"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta.update(version="9.8.7", appVersion="9.8.7")
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return chart


def test_a_chart_version_bump_leaves_vllm_and_redis_pod_templates_unchanged(bumped_chart: Path) -> None:
    before, after = render(), render(chart=bumped_chart)
    names = [(o["kind"], o["metadata"]["name"]) for o in before if o["kind"] in {"Deployment", "StatefulSet"}]
    assert ("StatefulSet", "crowd-gateway-redis") in names and len(names) == 4
    for kind, name in names:
        (old,), (new,) = find(before, kind, name), find(after, kind, name)
        assert old["metadata"]["labels"]["helm.sh/chart"] != new["metadata"]["labels"]["helm.sh/chart"]
        if name == "crowd-gateway":
            continue  # its image tag defaults to appVersion: a new app version should roll it
        assert yaml.safe_dump(old["spec"]["template"]) == yaml.safe_dump(new["spec"]["template"]), name
    (gateway,) = find(after, "Deployment", "crowd-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels


def test_tenants_and_their_limits_pass_through_to_the_gateway_config(tmp_path: Path) -> None:
    limits = {"requests_per_minute": 60, "tokens_per_minute": 100000, "usd_per_day": 5, "usd_per_month": 100}
    team = {"name": "team-a", "keys_env": "TEAM_A_KEYS", "limits": {"usd_per_month": 20}}
    objects = rendered(tmp_path, {"members": MEMBERS, "gateway": {
        "config": {**ENSEMBLES["config"], "gateway": {"limits": limits, "tenants": [team]}},
        "extraEnv": [{"name": "TEAM_A_KEYS", "valueFrom": {"secretKeyRef": {"name": "team-a", "key": "keys"}}}]}})
    config = parse_config(gateway_config(objects))
    assert config.gateway.limits is not None and config.gateway.limits.model_dump() == limits
    assert config.gateway.tenants[0].limits.usd_per_month == 20  # type: ignore[union-attr]
    with pytest.raises(AssertionError, match="usd_per_week"):
        rendered(tmp_path, {"members": MEMBERS, "gateway": {
            "config": {**ENSEMBLES["config"], "gateway": {"limits": {"usd_per_week": 1}}}}})
