"""Bad input, auth, plain proxying, readiness and metrics, in-process: the app over httpx.ASGITransport, its
members on the fake upstream. Streaming and the process itself (workers, startup) are in tests/integration."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.harness import Upstream, member
from tests.harness.inprocess import InProcessGateway


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {
        "gateway": {"max_body_bytes": 2048},
        "members": [member(upstream, "solo", model="solo-upstream", price=(1.0, 1.0)),
                    member(upstream, "other", model="other", price=None)],
        "ensembles": [{"name": "crowd", "members": ["solo", "other"], "quorum": 1}],
    }


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def post(gateway: InProcessGateway, content: bytes | None = None, **kwargs: Any) -> httpx.Response:
    return gateway.post("/v1/chat/completions", content=content, **kwargs)


def test_malformed_json(gateway: InProcessGateway) -> None:
    r = post(gateway, b'{"model": "crowd", "messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
    r = post(gateway, b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in error_of(r)["message"]


def test_missing_messages(gateway: InProcessGateway) -> None:
    r = post(gateway, json={"model": "crowd", "labels": ["a", "b"]})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "messages" and err["code"] == "missing_required_parameter"


@pytest.mark.parametrize("labels, needle", [([], "at least two"), (["yes"], "at least two"),
                                            (["yes", "Yes"], "duplicate"), (["a", ""], "non-empty"),
                                            ("a,b", "valid list")])
def test_bad_label_sets(gateway: InProcessGateway, labels: Any, needle: str) -> None:
    r = post(gateway, json={"model": "crowd", "labels": labels, "messages": [{"role": "user", "content": "x"}]})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "labels" and needle in err["message"]


def test_no_label_set(gateway: InProcessGateway) -> None:
    r = post(gateway, json={"model": "crowd", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and error_of(r)["code"] == "missing_labels"


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_oversized_body_is_413(gateway: InProcessGateway) -> None:
    big = {"model": "crowd", "labels": ["a", "b"], "messages": [{"role": "user", "content": "x" * 5000}]}
    r = post(gateway, json=big)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


def test_unknown_route_and_method(gateway: InProcessGateway) -> None:
    assert error_of(gateway.get("/v1/nothing"))["code"] == "unknown_url"
    assert gateway.get("/v1/chat/completions").status_code == 405


def test_passthrough_unchanged_with_upstream_model_id(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("solo", answer="free text answer", usage=[7, 3])
    r = client.chat.completions.create(model="solo", messages=[{"role": "user", "content": "hi"}], temperature=0.3,
                                       extra_body={"custom_option": 1})
    assert r.choices[0].message.content == "free text answer" and r.usage.total_tokens == 10
    sent = upstream.calls("solo")["last"]
    assert sent == {"model": "solo-upstream", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3,
                    "custom_option": 1}


def test_passthrough_relays_upstream_errors(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("solo", fail=[400])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="solo", messages=[{"role": "user", "content": "hi"}])
    assert "scripted failure 400" in err.value.body["message"]


def test_models_lists_ensembles_and_members(client: OpenAI) -> None:
    models = {m.id: m.model_extra["kind"] for m in client.models.list()}
    assert models == {"crowd": "ensemble", "solo": "member", "other": "member"}


def test_metrics_counters_move(client: OpenAI, gateway: InProcessGateway, upstream: Upstream) -> None:
    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = gateway.get("/metrics").text
    upstream.script("solo", answer="a")
    upstream.script("other", answer="b")
    client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": "x"}],
                                   extra_body={"labels": ["a", "b"]})
    after = gateway.get("/metrics").text
    for prefix in ('crowd_gateway_requests_total{ensemble="crowd",outcome="ok"}',
                   'crowd_gateway_upstream_requests_total{member="solo",outcome="ok"}',
                   'crowd_gateway_confidence_count{ensemble="crowd"}',
                   'crowd_gateway_overhead_seconds_count{route="ensemble"}',
                   'crowd_gateway_tokens_total{kind="prompt",member="solo"}'):
        assert value(after, prefix) == value(before, prefix) + (10 if "tokens" in prefix else 1), prefix
    assert value(after, 'crowd_gateway_cost_usd_total{member="solo"}') > value(before, 'crowd_gateway_cost_usd_total{member="solo"}')


def test_auth_required_when_keys_configured(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GATEWAY_KEYS", "k1,k2")
    gw = InProcessGateway({"gateway": {"api_keys_env": "TEST_GATEWAY_KEYS"},
                           "members": [member(upstream, "solo", model="solo", price=None)]})
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            gw.openai(api_key="wrong").models.list()
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
        r = gw.post("/v1/chat/completions", json={"model": "solo", "messages": []})
        assert r.status_code == 401
        assert [m.id for m in gw.openai(api_key="k2").models.list()] == ["solo"]
        assert gw.get("/healthz").status_code == 200 and gw.get("/metrics").status_code == 200
    finally:
        gw.close()


def test_readyz_reports_member_health_without_failing(gateway: InProcessGateway, upstream: Upstream) -> None:
    """Pool health is in the body and the gauges; only the process and its store decide readiness (issue 14)."""
    assert gateway.get("/readyz").json()["ensembles"]["crowd"]["ready"] is True
    upstream.script("solo", down=True)
    upstream.script("other", down=True)
    r = gateway.get("/readyz")
    assert r.status_code == 200 and r.json()["store"] == "ok"
    assert r.json()["ensembles"]["crowd"] == {"healthy": [], "quorum": 1, "ready": False}
    scraped = gateway.get("/metrics").text
    assert 'crowd_gateway_ensemble_ready{ensemble="crowd"} 0.0' in scraped
    assert 'crowd_gateway_member_healthy{member="solo"} 0.0' in scraped
