"""Alert rules in deploy/prometheus/: promtool's checks and unit tests, and that they cover every alert
and use only metrics the gateway (gateway/metrics.py) or vLLM actually export."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.deploy.k8s_support import REPO, exported_names, promtool

PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "crowd-gateway-rules.yaml"
RULE_TESTS = PROM_DIR / "crowd-gateway-rules.test.yaml"
REQUIRED_ALERTS = {
    "CrowdGatewayMemberDown",
    "CrowdGatewayUpstreamErrorRate",
    "CrowdGatewayLatencyP99High",
    "CrowdGatewayEscalationSpike",
    "CrowdGatewayAgreementCollapse",
    "CrowdGatewayCircuitOpen",
    "CrowdGatewayMemberGoldAgreementDrop",
    "CrowdGatewayCrowdBelowBestMember",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    proc = run("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config_of_the_standalone_prometheus() -> None:
    proc = run("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    proc = run("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert REQUIRED_ALERTS <= alerts
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired, f"alerts without a test that fires them: {sorted(alerts - fired)}"


def test_every_alert_has_severity_and_text() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_rules_use_only_exported_metrics() -> None:
    exported = exported_names() | {"up", "vllm:num_requests_waiting"}
    recorded = {r["record"] for r in rules() if "record" in r}
    functions = {"sum", "by", "rate", "increase", "abs", "max", "max_over_time", "histogram_quantile", "or", "unless",
                 "and", "le"}
    used = set()
    for rule in rules():
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]|\boffset \d+[smhdwy]', "", rule["expr"])
        used |= {name for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if name not in functions}
    unknown = used - exported - recorded - {"namespace", "job", "ensemble", "member", "bin"}
    assert not unknown, f"rules use series nobody exports: {sorted(unknown)}"


def test_every_aggregation_keeps_namespace_and_job() -> None:
    """Two releases in one Prometheus stay apart: each `by (...)` starts with namespace and job, and a
    recorded series is named after those labels (level:metric:operation)."""
    for rule in rules():
        groupings = re.findall(r"\bby \(([^)]*)\)", rule["expr"])
        assert groupings or "alert" in rule, rule
        for grouping in groupings:
            assert grouping.split(", ")[:2] == ["namespace", "job"], (rule.get("record") or rule["alert"], grouping)
        if "record" in rule:
            assert rule["record"].startswith("namespace_job_"), rule["record"]


def test_unit_tests_cover_two_releases() -> None:
    """The promtool tests include a case with one ensemble and member name in two namespaces."""
    names = [test["name"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]]
    assert "two releases are not blended" in names
