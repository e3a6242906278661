"""Issue 20's lows, over real HTTP: a passthrough stream is bounded and dies with its client, error bodies stay
small whatever the label set, reserved item ids are refused, and the API key is checked before anything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.harness import Gateway, Upstream, member

STREAM = {"messages": [{"role": "user", "content": "hello"}], "stream": True}
"""The slow streamer's answer is 8 words, streamed 3 times over: 24 chunks."""
SLOW_WORDS = "one two three four five six seven eight"


@pytest.fixture(scope="module")
def gw(upstream: Upstream, gateway_factory: Any) -> Gateway:
    names = ["s1", "s2", "s3"]
    return gateway_factory({
        "gateway": {"api_keys_env": "LIMITS_TEST_KEYS"},
        "members": [member(upstream, "streamer", max_stream_s=1), member(upstream, "slowpoke"),
                    *(member(upstream, n) for n in names)],
        "ensembles": [{"name": "three", "members": names, "quorum": 2}]}, env={"LIMITS_TEST_KEYS": "k1"})


@pytest.fixture
def client(gw: Gateway, upstream: Upstream) -> openai.OpenAI:
    upstream.reset()
    return gw.openai("k1")


def eventually(check: Callable[[], bool]) -> bool:
    """Whether `check` holds within a few seconds: what the gateway and the member do after the client has its
    answer (counting a cut stream, noticing a closed connection) lands a little later."""
    for _ in range(200):
        if check():
            return True
        time.sleep(0.05)
    return False


def upstream_counter(gw: Gateway, member_name: str, outcome: str) -> float:
    prefix = f'crowd_gateway_upstream_requests_total{{member="{member_name}",outcome="{outcome}"}} '
    line = next((line for line in gw.get("/metrics").text.splitlines() if line.startswith(prefix)), None)
    return float(line.removeprefix(prefix)) if line else 0.0


def test_a_passthrough_stream_is_cut_at_max_stream_s(client: openai.OpenAI, upstream: Upstream, gw: Gateway) -> None:
    upstream.script("streamer", answer=SLOW_WORDS, stream_gap_ms=200)  # ~4.6 s of stream, max_stream_s 1
    chunks = []
    with pytest.raises(openai.APIError, match="max_stream_s of 1s"):
        for chunk in client.chat.completions.create(model="streamer", **STREAM):
            chunks.append(chunk)
    assert 0 < len(chunks) < 24
    assert eventually(lambda: upstream.calls("streamer")["cancelled"] == 1), "the member's connection was closed"
    assert eventually(lambda: upstream_counter(gw, "streamer", "timeout") == 1)
    assert 'crowd_gateway_circuit_state{member="streamer"} 0.0' in gw.get("/metrics").text


def test_a_client_that_leaves_a_stream_cancels_the_member_call(client: openai.OpenAI, upstream: Upstream,
                                                                gw: Gateway) -> None:
    upstream.script("slowpoke", answer=SLOW_WORDS, stream_gap_ms=500)  # ~12 s of stream if read to the end
    with httpx.stream("POST", f"{gw.v1}/chat/completions", json={"model": "slowpoke", **STREAM},
                      headers={"Authorization": "Bearer k1"}, timeout=10) as r:
        first = next(r.iter_bytes())
    assert first.startswith(b"data: ")
    assert eventually(lambda: upstream.calls("slowpoke")["cancelled"] == 1)
    assert eventually(lambda: upstream_counter(gw, "slowpoke", "cancelled") == 1), "a client leaving is no failure"
    assert upstream_counter(gw, "slowpoke", "error") == 0


def test_error_bodies_name_a_huge_label_set_once_and_capped(client: openai.OpenAI, upstream: Upstream) -> None:
    labels = [f"label-{i:04d}-" + "x" * 180 for i in range(1000)]  # 1,000 labels of ~190 characters: 190 KB
    for name in ("s1", "s2", "s3"):
        upstream.script(name, answer="none of them")
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="three", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"labels": labels})
    assert caught.value.status_code == 503
    text = caught.value.response.text
    assert len(text) < 8000 and text.count(labels[0]) == 1 and labels[-1] not in text
    assert "and 980 more" in text
    upstream.script("s1", answer=labels[0])
    upstream.script("s2", answer=labels[0])
    raw = client.chat.completions.with_raw_response.create(model="three", messages=[{"role": "user", "content": "y"}],
                                                           extra_body={"labels": labels})
    votes = raw.parse().model_extra["annotation"]["votes"]
    assert next(v for v in votes if v["member"] == "s3")["error"] == "answer 'none of them' matches no label"


@pytest.mark.parametrize("item_id", ["params", "feedback", "refit", "..", "a/b"])
def test_reserved_item_ids_are_refused(client: openai.OpenAI, upstream: Upstream, gw: Gateway, item_id: str) -> None:
    for name in ("s1", "s2", "s3"):
        upstream.script(name, answer="yes")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="three", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"labels": ["yes", "no"], "item_id": item_id})
    assert caught.value.body["param"] == "item_id" and "reserved" in caught.value.body["message"]  # type: ignore[index]
    feedback = gw.post("/v1/annotations/feedback", headers={"Authorization": "Bearer k1"},
                       json={"item_id": item_id, "label": "yes", "source": "gold", "labels": ["yes", "no"]})
    assert feedback.status_code == 400 and feedback.json()["error"]["param"] == "item_id"


def test_the_key_is_checked_before_any_parameter_or_body(gw: Gateway) -> None:
    """Every /v1 route: no key and a malformed query or body is a 401, never a 400 that reveals what was checked."""
    paths = {"/v1/chat/completions": "POST", "/v1/completions": "POST", "/v1/models": "GET", "/v1/models/x": "GET",
             "/v1/annotations/feedback": "POST", "/v1/annotations/params": "GET", "/v1/annotations/x": "GET",
             "/v1/review": "GET", "/v1/annotations/refit": "POST", "/v1/files": "GET", "/v1/files/x": "GET",
             "/v1/files/x/content": "GET", "/v1/batches": "GET", "/v1/batches/x": "GET", "/v1/batches/x/cancel": "POST",
             "/v1/usage": "GET"}
    documented = {path.replace("{item_id}", "x").replace("{file_id}", "x").replace("{batch_id}", "x")
                  .replace("{model_id}", "x") for path in gw.get("/openapi.json").json()["paths"]}
    assert {p for p in documented if p.startswith("/v1/")} <= set(paths), "a new route: add it here"
    for path, method in paths.items():
        r = gw.http.request(method, f"{path}?limit={'9' * 5000}&order=sideways&strategy=none", content=b"{not json",
                            headers={"Content-Type": "application/json"})
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
    r = gw.post("/v1/files", content=b"x" * 100, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 401
