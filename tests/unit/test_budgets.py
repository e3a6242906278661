"""Budgets and rate limits, in process: which tenants are metered and with what limits, OpenAI's reset format,
the token estimate corrected by the answer's usage, and the default tenant (no keys) limited by `gateway.limits`.
Through real processes and Redis: tests/integration/test_budgets.py."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.budgets import reset_text
from gateway.config import GatewaySettings, Limits
from gateway.tenancy import DEFAULT, key_tenant
from tests.harness import Upstream, member
from tests.harness.inprocess import InProcessGateway

HI = [{"role": "user", "content": "hello"}]


def gateway_config(up: Upstream) -> dict[str, Any]:
    return {"gateway": {"api_keys_env": None, "limits": {"requests_per_minute": 100, "tokens_per_minute": 6000}},
            "members": [member(up, "solo"), member(up, "a"), member(up, "b")],
            "ensembles": [{"name": "crowd", "members": ["a", "b"]}]}


def script_upstream(up: Upstream) -> None:
    for name in ("solo", "a", "b"):
        up.script(name, answer="yes", usage=[40, 2])


def test_which_tenants_are_metered_and_with_which_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLO_KEYS", "k1,k2")
    monkeypatch.setenv("TEAM_KEYS", "t1")
    monkeypatch.setenv("OPEN_KEYS", "o1")
    every = {"requests_per_minute": 10}
    teams = [{"name": "team", "keys_env": "TEAM_KEYS", "limits": {"usd_per_day": 2}},
             {"name": "open", "keys_env": "OPEN_KEYS", "limits": {}}]

    def metered(**settings: Any) -> dict[str, Limits]:
        gateway = GatewaySettings.model_validate(settings)
        return gateway.tenant_limits(gateway.api_keys())

    assert metered(api_keys_env=None) == {}
    assert metered(api_keys_env=None, limits=every) == {DEFAULT: Limits(**every)}
    found = metered(api_keys_env="SOLO_KEYS", limits=every, tenants=teams)
    assert found == {key_tenant("k1"): Limits(**every), key_tenant("k2"): Limits(**every),
                     "team": Limits(usd_per_day=2), "open": Limits()}  # `{}`: counted, never refused
    assert metered(api_keys_env="SOLO_KEYS", tenants=teams) == {"team": Limits(usd_per_day=2), "open": Limits()}


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "0ms"), (0.0204, "20ms"), (1.0, "1s"), (6.5, "6.5s"),
                                               (360.0, "6m0s"), (59.9999, "1m0s"), (3723.25, "1h2m3.25s")])
def test_reset_is_written_as_openai_writes_it(seconds: float, text: str) -> None:
    assert reset_text(seconds) == text


def test_the_token_estimate_is_replaced_by_the_answers_usage(gateway: InProcessGateway) -> None:
    client = gateway.openai()
    long = [{"role": "user", "content": "word " * 400}]  # about 500 tokens by the estimate, 42 by the member
    first = client.chat.completions.with_raw_response.create(model="solo", messages=long)
    estimate = 6000 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert 450 < estimate < 600
    second = client.chat.completions.with_raw_response.create(model="solo", messages=long)
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 6000 - 42 - estimate <= remaining <= 6000 - 42 - estimate + 20  # + what refilled meanwhile


def test_the_default_tenant_is_limited_on_ensembles_and_their_streams(gateway: InProcessGateway) -> None:
    client = gateway.openai()
    before = gateway.get("/v1/usage").json()["data"][0]["amount"]["value"]
    plain = client.chat.completions.with_raw_response.create(model="crowd", messages=HI,
                                                             extra_body={"labels": ["yes", "no"]})
    with client.chat.completions.with_streaming_response.create(model="crowd", messages=HI, stream=True,
                                                                extra_body={"labels": ["yes", "no"]}) as stream:
        assert any(b'"yes"' in line.encode() for line in stream.iter_lines())
        streamed = stream.headers
    for headers in (plain.headers, streamed):
        assert headers["x-ratelimit-limit-requests"] == "100" and headers["x-ratelimit-limit-tokens"] == "6000"
    body = gateway.get("/v1/usage").json()
    assert body["tenant"] == DEFAULT and body["limits"]["requests_per_minute"] == 100
    spent = body["data"][0]["amount"]["value"] - before
    assert spent == pytest.approx(2 * plain.parse().usage.model_extra["cost_usd"])  # the stream's answer counted too
