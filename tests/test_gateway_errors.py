"""Bad input, auth, passthrough (streaming included) and metrics, end to end over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Gateway, Upstream


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, gateway_factory: Any) -> Gateway:
    config = {
        "gateway": {"max_body_bytes": 2048},
        "members": [{"name": "solo", "base_url": upstream.base_url("solo"), "model": "solo-upstream",
                     "price": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}},
                    {"name": "other", "base_url": upstream.base_url("other"), "model": "other"}],
        "ensembles": [{"name": "crowd", "members": ["solo", "other"], "quorum": 1}],
    }
    return gateway_factory(config)


@pytest.fixture
def client(gateway: Gateway, upstream: Upstream) -> OpenAI:
    upstream.reset()
    return OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def post(gateway: Gateway, content: bytes | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/chat/completions", content=content, **kwargs)


def test_malformed_json(gateway: Gateway) -> None:
    r = post(gateway, b'{"model": "crowd", "messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json"
    r = post(gateway, b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in error_of(r)["message"]


def test_missing_messages(gateway: Gateway) -> None:
    r = post(gateway, json={"model": "crowd", "labels": ["a", "b"]})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "messages" and err["code"] == "missing_required_parameter"


@pytest.mark.parametrize("labels, needle", [([], "at least two"), (["yes"], "at least two"),
                                            (["yes", "Yes"], "duplicate"), (["a", ""], "non-empty"),
                                            ("a,b", "valid list")])
def test_bad_label_sets(gateway: Gateway, labels: Any, needle: str) -> None:
    r = post(gateway, json={"model": "crowd", "labels": labels, "messages": [{"role": "user", "content": "x"}]})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "labels" and needle in err["message"]


def test_no_label_set(gateway: Gateway) -> None:
    r = post(gateway, json={"model": "crowd", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and error_of(r)["code"] == "missing_labels"


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_oversized_body_is_413(gateway: Gateway) -> None:
    big = {"model": "crowd", "labels": ["a", "b"], "messages": [{"role": "user", "content": "x" * 5000}]}
    r = post(gateway, json=big)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


def test_unknown_route_and_method(gateway: Gateway) -> None:
    assert error_of(httpx.get(f"{gateway.v1}/nothing"))["code"] == "unknown_url"
    assert httpx.get(f"{gateway.v1}/chat/completions").status_code == 405


def test_stream_to_an_ensemble_is_a_clear_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": "x"}], stream=True,
                                       extra_body={"labels": ["a", "b"]})
    assert err.value.body["param"] == "stream"


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


def test_streaming_passthrough(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("solo", answer="one two", usage=[5, 6])
    stream = client.chat.completions.create(model="solo", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two " * 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_stream_cut_mid_answer_raises(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("solo", answer="a b c d", cut_stream=True)
    stream = client.chat.completions.create(model="solo", messages=[{"role": "user", "content": "hi"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2 and "stream was cut" in str(err.value.message) + str(err.value.body)


def test_models_lists_ensembles_and_members(client: OpenAI) -> None:
    models = {m.id: m.model_extra["kind"] for m in client.models.list()}
    assert models == {"crowd": "ensemble", "solo": "member", "other": "member"}


def test_metrics_counters_move(client: OpenAI, gateway: Gateway, upstream: Upstream) -> None:
    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = httpx.get(f"{gateway.url}/metrics").text
    upstream.script("solo", answer="a")
    upstream.script("other", answer="b")
    client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": "x"}],
                                   extra_body={"labels": ["a", "b"]})
    after = httpx.get(f"{gateway.url}/metrics").text
    for prefix in ('crowd_gateway_requests_total{ensemble="crowd",outcome="ok"}',
                   'crowd_gateway_upstream_requests_total{member="solo",outcome="ok"}',
                   'crowd_gateway_confidence_count{ensemble="crowd"}',
                   'crowd_gateway_overhead_seconds_count{route="ensemble"}',
                   'crowd_gateway_tokens_total{kind="prompt",member="solo"}'):
        assert value(after, prefix) == value(before, prefix) + (10 if "tokens" in prefix else 1), prefix
    assert value(after, 'crowd_gateway_cost_usd_total{member="solo"}') > value(before, 'crowd_gateway_cost_usd_total{member="solo"}')


def test_auth_required_when_keys_configured(upstream: Upstream, gateway_factory: Any) -> None:
    config = {"gateway": {"api_keys_env": "TEST_GATEWAY_KEYS"},
              "members": [{"name": "solo", "base_url": upstream.base_url("solo"), "model": "solo"}]}
    gw = gateway_factory(config, env={"TEST_GATEWAY_KEYS": "k1,k2"})
    with pytest.raises(openai.AuthenticationError) as err:
        OpenAI(base_url=gw.v1, api_key="wrong", max_retries=0).models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{gw.v1}/chat/completions", json={"model": "solo", "messages": []})
    assert r.status_code == 401
    assert [m.id for m in OpenAI(base_url=gw.v1, api_key="k2", max_retries=0).models.list()] == ["solo"]
    assert httpx.get(f"{gw.url}/healthz").status_code == 200 and httpx.get(f"{gw.url}/metrics").status_code == 200


def test_readyz_follows_member_health(gateway: Gateway, upstream: Upstream) -> None:
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    upstream.script("solo", down=True)
    upstream.script("other", down=True)
    r = httpx.get(f"{gateway.url}/readyz")
    assert r.status_code == 503 and r.json()["ensembles"]["crowd"]["healthy"] == []


def test_metrics_merge_across_workers(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    config = {"members": [{"name": "solo", "base_url": upstream.base_url("solo"), "model": "solo"}]}
    gw = gateway_factory(config, workers=2)
    client = OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    for _ in range(20):  # new connections spread over both workers
        with httpx.Client() as http:
            http.post(f"{gw.v1}/chat/completions", json={"model": "solo", "messages": [{"role": "user", "content": "x"}]})
    client.close()
    text = httpx.get(f"{gw.url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith('crowd_gateway_requests_total{ensemble="solo",outcome="ok"}'))
    assert float(line.rsplit(" ", 1)[1]) == 20.0


def test_invalid_config_stops_startup_naming_the_field(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "bad.yaml"
    path.write_text("members:\n  - name: a\n    base_url: ftp://x\n    model: m\n    timeout_s: -1\n")
    crowd = Path(sys.executable).parent / "crowd-gateway"
    proc = subprocess.run([str(crowd), "serve", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "members.0.base_url" in proc.stderr and "members.0.timeout_s" in proc.stderr
    assert "Traceback" not in proc.stderr
