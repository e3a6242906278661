"""The Grafana dashboard in deploy/grafana/: every query is valid PromQL (checked by promtool), uses
only exported series, is scoped by the cluster, namespace and job variables, the panels the issue
asks for are there, and the label quality panels compute what they say on recorded series (promtool's
unit tests, deploy/grafana/crowd-gateway-dashboard.test.yaml)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.k8s_support import REPO, exported_names, promtool

DASHBOARD = REPO / "deploy" / "grafana" / "crowd-gateway.json"
DASHBOARD_TESTS = REPO / "deploy" / "grafana" / "crowd-gateway-dashboard.test.yaml"
VLLM_SERIES = {"vllm:num_requests_waiting", "vllm:num_requests_running"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def as_promql(expr: str) -> str:
    """Replace Grafana's variables with what they expand to, so Prometheus' parser can check the query."""
    for variable, value in (("$__rate_interval", "5m"), ("$window", "1h"), ("$ensemble", ".*"), ("$member", ".*"),
                            ("$cluster", ".*"), ("$namespace", ".*"), ("$job", ".*")):
        expr = expr.replace(variable, value)
    return expr


def as_rules(tmp_path: Path) -> Path:
    """Every panel query as a recording rule `dashboard:<panel title>:<refId>`, in tmp_path/dashboard-queries.yaml."""
    rules = [{"record": f"dashboard:{re.sub('[^a-z0-9]+', '_', panel['title'].lower()).strip('_')}:{t['refId']}",
              "expr": as_promql(t["expr"])} for panel in dashboard()["panels"] for t in panel.get("targets", [])]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(as_rules(tmp_path))], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_quality_panels_pass_promtool_unit_tests(tmp_path: Path) -> None:
    """Each label quality panel's query, on recorded series, gives the figure its description promises."""
    as_rules(tmp_path)
    shutil.copy(DASHBOARD_TESTS, tmp_path / DASHBOARD_TESTS.name)
    proc = subprocess.run([promtool(), "test", "rules", DASHBOARD_TESTS.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {case["expr"].split(":")[1] for test in yaml.safe_load(DASHBOARD_TESTS.read_text())["tests"]
              for case in test["promql_expr_test"]}
    quality = [p for p in dashboard()["panels"] if p["type"] != "row" and "$window" in str(p["targets"])]
    assert len(quality) >= 8 and tested == {re.sub("[^a-z0-9]+", "_", p["title"].lower()).strip("_")
                                            for p in quality}


def test_queries_use_only_exported_series() -> None:
    known = exported_names() | VLLM_SERIES
    keywords = {"sum", "by", "rate", "increase", "abs", "max", "histogram_quantile", "le"}
    for expr in queries():
        stripped = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", expr)
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped)) - keywords
        labels = {"ensemble", "outcome", "route", "member", "kind", "to", "reason", "bin"}
        assert names - labels <= known, f"{expr}: unknown series {sorted(names - labels - known)}"


def test_required_views_are_there() -> None:
    text = "\n".join(queries())
    for series in [
        "crowd_gateway_requests_total",                     # request rate
        "crowd_gateway_request_duration_seconds_bucket",    # latency percentiles
        "crowd_gateway_overhead_seconds_bucket",            # overhead
        "crowd_gateway_upstream_requests_total",            # per-member errors
        "crowd_gateway_upstream_duration_seconds_bucket",   # per-member latency
        "crowd_gateway_confidence_sum",                     # confidence
        "crowd_gateway_agreement_sum",                      # agreement
        "crowd_gateway_escalations_total",                  # escalations
        "crowd_gateway_cost_usd_total",                     # cost per hour
        "vllm:num_requests_waiting",                        # vLLM queue depth
        "crowd_gateway_gold_answers_total",                 # the crowd's agreement with gold, calibration
        "crowd_gateway_gold_confidence_total",
        "crowd_gateway_gold_votes_total",                   # each member's agreement with gold, calibration
        "crowd_gateway_gold_vote_confidence_total",
        "crowd_gateway_votes_total",                        # each member's agreement with the crowd
        "crowd_gateway_reviews_total",                      # review rate
    ]:
        assert series in text, f"no panel queries {series}"
    assert "crowd_gateway_cost_usd_total" in text and "* 3600" in text
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (ensemble, le)" in text


SCOPE = {"cluster": '"$cluster"', "namespace": '"$namespace"', "job": '"$job"'}


def test_every_query_is_scoped_by_cluster_namespace_and_job() -> None:
    """Each series selector in every panel and variable query matches on the three variables, so two
    releases (or clusters) never blend; vLLM's series are selected as job "<gateway job>-vllm"."""
    dash = dashboard()
    exprs = queries() + [v["query"]["query"] for v in dash["templating"]["list"]
                         if v["type"] == "query" and v["name"] not in {"cluster", "namespace", "job"}]
    assert len(exprs) > 20
    for expr in exprs:
        selectors = re.findall(r"\b((?:crowd_gateway_|vllm:)[a-zA-Z0-9_:]+)(\{[^}]*\})?", expr)
        assert selectors, expr
        for name, selector in selectors:
            matchers = dict(re.findall(r'(\w+)=~("[^"]*")', selector))
            scope = {**SCOPE, "job": '"$job-vllm"'} if name.startswith("vllm:") else SCOPE
            assert {k: matchers.get(k) for k in scope} == scope, f"{name} in {expr}"


def test_scope_variables_chain() -> None:
    """cluster, then namespace within it, then job within both: each picker lists only what exists."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables)[:4] == ["datasource", "cluster", "namespace", "job"]
    assert variables["namespace"]["query"]["query"].endswith('{cluster=~"$cluster"}, namespace)')
    assert variables["job"]["query"]["query"].endswith('{cluster=~"$cluster", namespace=~"$namespace"}, job)')
    for name in ("cluster", "namespace", "job"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name


def test_dashboard_is_portable() -> None:
    """No fixed uid (Grafana assigns one on import; the chart sets one per release), a datasource
    variable instead of a hard-coded datasource, no overlaps."""
    dash = dashboard()
    assert dash["uid"] is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells |= mine
