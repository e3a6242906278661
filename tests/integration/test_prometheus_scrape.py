"""A real Prometheus scrapes a real gateway on 127.0.0.1, with deploy/prometheus/prometheus.yml and the
alert rules loaded, and a query returns the gateway's request counter after one request."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import Gateway, free_port, stop, wait_http
from tests.deploy.k8s_support import REPO

PROM_DIR = REPO / "deploy" / "prometheus"


def prometheus_config(gateway: str, vllm: str) -> dict[str, Any]:
    """The shipped scrape config, pointed at this test's servers and scraping every second."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM_DIR / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["crowd-gateway"]["static_configs"] = [{"targets": [gateway]}]
    jobs["crowd-gateway-vllm"]["static_configs"] = [{"targets": [vllm], "labels": {"member": "smol"}}]
    return config


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """Start Prometheus on a free port; yields (url, function that installs a config and reloads)."""
    binary = shutil.which("prometheus")
    if not binary:
        pytest.fail("prometheus is not installed: run deploy/system.sh (Debian package prometheus)")
    port = free_port()
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}}))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", "--log.level=warn"],
            stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def configure(config: dict[str, Any]) -> None:
        config_path.write_text(yaml.safe_dump(config))
        httpx.post(f"{url}/-/reload", timeout=10).raise_for_status()

    try:
        try:
            wait_http(f"{url}/-/ready", proc, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"Prometheus did not start: {exc}\n{log.read_text()[-2000:]}")
        yield url, configure
    finally:
        stop(proc)


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(prometheus_url: str, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := query(prometheus_url, promql):
            return result
        time.sleep(0.25)
    targets = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    seen = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
    raise AssertionError(f"Prometheus returned nothing for {promql} within {timeout}s; targets: {seen}")


def test_prometheus_scrapes_the_gateway_request_counter(gateway_factory: Any, prometheus: tuple[str, Any]) -> None:
    prometheus_url, configure = prometheus
    # One member behind a closed port: requests fail fast, and the counters still move.
    gateway: Gateway = gateway_factory({
        "members": [{"name": "smol", "base_url": "http://127.0.0.1:9/v1", "model": "smollm2",
                     "timeout_s": 2, "retries": 0}],
        "ensembles": [{"name": "crowd", "members": ["smol"], "deadline_s": 5}],
    })
    configure(prometheus_config(f"127.0.0.1:{gateway.port}", f"127.0.0.1:{free_port()}"))

    assert httpx.get(f"{gateway.v1}/models", timeout=10).status_code == 200
    answer = httpx.post(f"{gateway.v1}/chat/completions", timeout=30, json={
        "model": "crowd", "messages": [{"role": "user", "content": "Great film!"}], "labels": ["positive", "negative"]})
    assert answer.status_code >= 500, answer.text  # its only member is down

    counted = 'sum by (ensemble) (crowd_gateway_requests_total{job="crowd-gateway", ensemble="crowd"}) >= 1'
    requests = wait_for(prometheus_url, counted)
    assert requests[0]["metric"] == {"ensemble": "crowd"}
    assert wait_for(prometheus_url, 'crowd_gateway_upstream_requests_total{job="crowd-gateway", member="smol"} >= 1')
    (up,) = wait_for(prometheus_url, 'up{job="crowd-gateway"} == 1')
    assert up["metric"]["instance"] == f"127.0.0.1:{gateway.port}"
    # The vLLM job carries the member label the alerts group by; nothing listens there.
    (vllm_up,) = wait_for(prometheus_url, 'up{job="crowd-gateway-vllm"} == 0')
    assert vllm_up["metric"]["member"] == "smol"

    groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {g["name"] for g in groups} == {"crowd-gateway.recording", "crowd-gateway.quality", "crowd-gateway.alerts"}
    # Every rule evaluates against live data without errors.
    deadline = time.monotonic() + 10
    while any(r.get("health") != "ok" for g in groups for r in g["rules"]) and time.monotonic() < deadline:
        time.sleep(0.5)
        groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r.get("health") != "ok"]
    assert not bad, bad
