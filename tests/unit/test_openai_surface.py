"""The OpenAI surface every SDK expects (issue 14), in-process with the official client: models.retrieve,
files.list/delete (tenant-scoped), batch usage, stream: true on an ensemble, retry hints, x-request-id,
refusals of what an ensemble cannot honour, readiness from the store, store outages as 503, and streamed
passthrough counted in cost and outcome."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from typing import Any

import jsonschema  # kubernetes-validate's dependency, as in tests/deploy
import openai
import pytest
from openai import OpenAI
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.server.requestid import RequestIdFilter
from tests.harness import Upstream, member
from tests.harness.inprocess import InProcessGateway

LABELS = ["positive", "negative"]
KEYS_ENV = "SURFACE_TEST_KEYS"
MEMBER_KEY_ENV = "SURFACE_TEST_MEMBER_KEY"


def script_upstream(upstream: Upstream) -> None:
    for name in ("sa", "sb", "sc"):
        upstream.script(name, keywords={"good": "positive", "bad": "negative", "zzz": "gibberish"})


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    os.environ[KEYS_ENV] = "key-a,key-b"  # read when the app is built, just after this
    os.environ[MEMBER_KEY_ENV] = "sk-member"
    return {
        "gateway": {"api_keys_env": KEYS_ENV},
        "batches": {"concurrency": 4, "poll_s": 0.05, "lease_s": 5},
        "members": [member(upstream, n) for n in ("sa", "sb", "sc")]
                   + [member(upstream, "om", dialect="openai", api_key_env=MEMBER_KEY_ENV)],
        "ensembles": [{"name": "crowd", "members": ["sa", "sb", "sc"], "quorum": 2}],
    }


@pytest.fixture
def other(gateway: InProcessGateway) -> OpenAI:
    return gateway.openai("key-b")


@pytest.fixture
def mine(client: OpenAI, gateway: InProcessGateway) -> OpenAI:
    return gateway.openai("key-a")


def ask(text: str) -> dict[str, Any]:
    return {"model": "crowd", "messages": [{"role": "user", "content": text}], "extra_body": {"labels": LABELS}}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_models_retrieve_and_unknown_model(mine: OpenAI) -> None:
    model = mine.models.retrieve("crowd")
    assert model.id == "crowd" and model.object == "model" and model.model_extra["kind"] == "ensemble"
    assert mine.models.retrieve("sa").model_extra["dialect"] == "vllm"
    with pytest.raises(openai.NotFoundError) as err:
        mine.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"


def upload(client: OpenAI, text: str) -> Any:
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "crowd", "labels": LABELS, "messages": [{"role": "user", "content": text}]}}
    return client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")


def test_files_list_and_delete_are_tenant_scoped(mine: OpenAI, other: OpenAI) -> None:
    first, second = upload(mine, "good"), upload(mine, "bad")
    theirs = upload(other, "good")
    listed = [f.id for f in mine.files.list()]
    assert listed[:2] == [second.id, first.id] and theirs.id not in listed
    assert [f.id for f in mine.files.list(purpose="batch_output")] == []
    page = mine.files.list(limit=1, after=second.id, order="desc")
    assert [f.id for f in page.data] == [first.id]
    with pytest.raises(openai.NotFoundError):
        mine.files.delete(theirs.id)
    deleted = mine.files.delete(first.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (first.id, "file", True)
    assert first.id not in [f.id for f in mine.files.list()]
    with pytest.raises(openai.NotFoundError):
        mine.files.retrieve(first.id)
    assert other.files.retrieve(theirs.id).id == theirs.id


def test_batch_usage_sums_the_output_lines(mine: OpenAI) -> None:
    batch = mine.batches.create(input_file_id=upload(mine, "good").id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    deadline = time.monotonic() + 20
    while (batch := mine.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.05)
    line = json.loads(mine.files.content(batch.output_file_id).text)
    usage = line["response"]["body"]["usage"]
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens) == \
        (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (30, 3, 33)
    assert batch.usage.model_extra["cost_usd"] == pytest.approx(usage["cost_usd"]) and usage["cost_usd"] > 0


def test_stream_on_an_ensemble_gives_the_label_usage_and_annotation(mine: OpenAI) -> None:
    chunks = list(mine.chat.completions.create(**ask("a good film"), stream=True,
                                               stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "positive"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens == 33
    assert last.usage.model_extra["cost_usd"] > 0
    assert last.model_extra["annotation"]["label"] == "positive"
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_stream_without_usage_and_json_schema_and_completions(mine: OpenAI) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "properties": {"sentiment": {"type": "string", "enum": LABELS}}}}}
    chunks = list(mine.chat.completions.create(model="crowd", messages=[{"role": "user", "content": "bad"}],
                                               response_format=schema, stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == '{"sentiment":"negative"}'
    assert chunks[-1].model_extra["annotation"]["label"] == "negative"
    texts = list(mine.completions.create(model="crowd", prompt="good", stream=True, extra_body={"labels": LABELS}))
    assert "".join(c.choices[0].text for c in texts) == "positive" and texts[0].object == "text_completion"


def test_stream_errors_before_the_first_byte_stay_json(mine: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        mine.chat.completions.create(**ask("zzz"), stream=True)
    assert err.value.status_code == 503 and err.value.body["code"] == "quorum_not_met"


def test_quorum_not_met_says_do_not_retry(gateway: InProcessGateway, mine: OpenAI, upstream: Upstream) -> None:
    """Members that answer gibberish will answer it again: the SDK must not repeat the fan-out three times."""
    retrying = gateway.openai("key-a").with_options(max_retries=3)
    with pytest.raises(openai.InternalServerError) as err:
        retrying.chat.completions.create(**ask("zzz"))
    assert err.value.response.headers["x-should-retry"] == "false"
    assert upstream.calls("sa")["calls"] == 1  # one fan-out, no client retry


def test_quorum_not_met_with_an_open_breaker_says_when_to_retry(gateway: InProcessGateway, mine: OpenAI,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An open breaker half-opens after `reset_after_s`: then a retry can find the quorum."""
    usable = gateway.state.upstreams.usable
    monkeypatch.setattr(gateway.state.upstreams, "usable", lambda name: name != "sc" and usable(name))
    with pytest.raises(openai.InternalServerError) as err:
        mine.chat.completions.create(**ask("zzz"))
    headers = err.value.response.headers
    assert headers["retry-after"] == "30" and "x-should-retry" not in headers


def test_request_id_on_every_answer(gateway: InProcessGateway, mine: OpenAI) -> None:
    ok = gateway.post("/v1/chat/completions", headers={"Authorization": "Bearer key-a", "x-request-id": "abc-123"},
                      json={**ask("good"), "labels": LABELS})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "abc-123"
    for response in (gateway.get("/v1/models"), gateway.get("/healthz"), gateway.get("/nowhere"),
                     gateway.post("/v1/chat/completions", content=b"{")):
        assert response.headers["x-request-id"].startswith("req_")
    assert gateway.get("/healthz", headers={"x-request-id": "x" * 500}).headers["x-request-id"] != "x" * 500


@pytest.mark.parametrize("extra, param", [({"n": 2}, "n"), ({"tools": [{"type": "function", "function": {
    "name": "f", "parameters": {}}}]}, "tools"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format")])
def test_ensemble_refuses_what_it_cannot_honour(mine: OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        mine.chat.completions.create(**ask("good"), **extra)
    assert err.value.body["param"] == param and err.value.body["code"] == "unsupported_parameter"
    assert "ensemble" in err.value.body["message"]


def test_neutral_values_pass_and_passthrough_forwards_everything(mine: OpenAI, upstream: Upstream) -> None:
    answer = mine.chat.completions.create(**ask("good"), n=1, logprobs=False, tool_choice="none")
    assert answer.choices[0].message.content == "positive"
    mine.chat.completions.create(model="sa", messages=[{"role": "user", "content": "good"}], n=2, logprobs=True)
    assert {"n": 2, "logprobs": True}.items() <= upstream.calls("sa")["last"].items()


def wait_store_up(gateway: InProcessGateway, timeout_s: float = 5.0) -> None:
    """Until the store's probe (gateway/store/health.py) ends the outage an earlier step left."""
    deadline = time.monotonic() + timeout_s
    while not gateway.state.health.up:
        assert time.monotonic() < deadline, "the store outage did not end"
        time.sleep(0.02)


def test_readyz_probes_openai_members_and_the_store(gateway: InProcessGateway, upstream: Upstream,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    upstream.reset()
    body = gateway.get("/readyz").json()
    assert body["members"]["om"] is True  # an `openai` member is probed at {base_url}/models with its key
    assert upstream.calls("om:models")["last"]["Authorization"] == "Bearer sk-member"
    upstream.script("om", down=True)
    assert gateway.get("/readyz").json()["members"]["om"] is False

    async def unreachable() -> None:
        raise RedisConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(gateway.state.store, "ping", unreachable)
    for _ in range(2):  # the first ping finds the outage, the second answer knows it
        r = gateway.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False and "Connection refused" in r.json()["store"]
    assert gateway.get("/metrics").text.count("crowd_gateway_store_up 0.0") == 1
    monkeypatch.undo()
    wait_store_up(gateway)
    assert gateway.get("/readyz").status_code == 200
    assert gateway.get("/metrics").text.count("crowd_gateway_store_up 1.0") == 1


def test_store_outage_is_503_on_store_routes_and_logged_once_with_the_request_id(
        gateway: InProcessGateway, mine: OpenAI, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def down(*_: Any, **__: Any) -> Any:
        raise RedisConnectionError("Connection refused")

    wait_store_up(gateway)
    for target, name in ((gateway.state.store, "reviews"), (gateway.state.store, "ping"),
                         (gateway.app.state.batches.store, "list_files"), (gateway.app.state.batches.store, "get_file")):
        monkeypatch.setattr(target, name, down)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="crowd_gateway"):
        for path, rid in (("/v1/files", "outage-1"), ("/v1/review", "outage-2"), ("/v1/files/file-x", "outage-3")):
            r = gateway.get(path, headers={"Authorization": "Bearer key-a", "x-request-id": rid})
            assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
            assert r.headers["x-request-id"] == rid
        with pytest.raises(openai.InternalServerError) as err:
            mine.files.list()
        assert err.value.body["code"] == "store_unavailable"
        monkeypatch.undo()
        wait_store_up(gateway)
    lines = [(r.request_tag, r.getMessage()) for r in caplog.records if "store" in r.getMessage()]
    assert len(lines) == 2, lines  # one when the outage began, one when it ended
    assert lines[0] == ("[outage-1] ", "store unavailable (store routes): ConnectionError: Connection refused")
    assert lines[1][0] == "" and re.fullmatch(r"store available again \(store routes\) after \d+\.\d s; "
                                              r"4 calls failed or skipped meanwhile", lines[1][1]), lines


def test_streamed_passthrough_counts_cost_and_cut_streams(mine: OpenAI, upstream: Upstream) -> None:
    upstream.script("sb", answer="hello there", usage=[40, 8])
    cost = sample("crowd_gateway_cost_usd_total", member="sb")
    tokens = sample("crowd_gateway_tokens_total", member="sb", kind="prompt")
    ok = sample("crowd_gateway_requests_total", ensemble="sb", outcome="ok")
    seconds = sample("crowd_gateway_request_duration_seconds_count", ensemble="sb")
    text = "".join(c.choices[0].delta.content or "" for c in mine.chat.completions.create(
        model="sb", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    assert text.startswith("hello")
    assert sample("crowd_gateway_tokens_total", member="sb", kind="prompt") == tokens + 40
    assert sample("crowd_gateway_cost_usd_total", member="sb") == pytest.approx(cost + (40 * 1.0 + 8 * 2.0) / 1e6)
    assert sample("crowd_gateway_requests_total", ensemble="sb", outcome="ok") == ok + 1
    assert sample("crowd_gateway_request_duration_seconds_count", ensemble="sb") == seconds + 1

    upstream.script("sb", answer="a b c d", cut_stream=True)
    errors = sample("crowd_gateway_requests_total", ensemble="sb", outcome="error")
    with pytest.raises(openai.APIError):
        list(mine.chat.completions.create(model="sb", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert sample("crowd_gateway_requests_total", ensemble="sb", outcome="error") == errors + 1
    assert sample("crowd_gateway_requests_total", ensemble="sb", outcome="ok") == ok + 1


def test_openapi_documents_the_completion_routes_and_their_request_models(gateway: InProcessGateway) -> None:
    doc = gateway.get("/openapi.json").json()

    def request_schema(path: str) -> dict[str, Any]:
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return {**ref, "components": doc["components"]}

    chat, completion = request_schema("/v1/chat/completions"), request_schema("/v1/completions")
    assert chat["$ref"].endswith("/ChatCompletionRequest") and completion["$ref"].endswith("/CompletionRequest")
    body = {"model": "crowd", "messages": [{"role": "user", "content": "good"}], "labels": LABELS, "temperature": 0}
    jsonschema.validate(body, chat)  # what the official client sends is valid under the document
    jsonschema.validate({"model": "crowd", "prompt": "good", "labels": LABELS}, completion)
    for bad in ({**body, "temperature": "hot"}, {"model": "crowd"}, {**body, "messages": []}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, chat)
    assert {"200", "400", "429", "503"} <= set(doc["paths"]["/v1/chat/completions"]["post"]["responses"])
    feedback = doc["paths"]["/v1/annotations/feedback"]["post"]["requestBody"]["content"]["application/json"]
    jsonschema.validate({"data": [{"item_id": "i", "label": "positive", "source": "gold"}]},
                        {**feedback["schema"], "components": doc["components"]})
