"""The Files and Batches API in-process: the official openai client -> the app over httpx.ASGITransport (its batch
worker running on the app's loop) -> scripted upstreams. Durability across processes is in tests/integration."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types import Batch

from tests.harness import Upstream, member
from tests.harness.inprocess import InProcessGateway

LABELS = ["positive", "negative"]
MAX_FILE = 65536


def script_upstream(upstream: Upstream) -> None:
    for name in ("bb", "bc"):
        upstream.script(name, keywords={"good": "positive", "bad": "negative"})
    upstream.script("ba", keywords={"good": "positive", "bad": "negative", "zzz": "gibberish"})
    for name in ("bs1", "bs2"):
        upstream.script(name, answer="positive", latency_ms=150)


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {
        "batches": {"concurrency": 4, "max_file_bytes": MAX_FILE, "poll_s": 0.05, "lease_s": 5},
        "members": [member(upstream, n) for n in ("ba", "bb", "bc", "bs1", "bs2")],
        "ensembles": [{"name": "crowd", "members": ["ba", "bb", "bc"], "quorum": 3},
                      {"name": "slow", "members": ["bs1", "bs2"], "quorum": 2}],
    }


def chat_line(custom_id: str, text: str, model: str = "crowd", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "labels": LABELS, "messages": [{"role": "user", "content": text}], **body}}


def upload(client: OpenAI, lines: list[Any]) -> Any:
    raw = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    return client.files.create(file=("requests.jsonl", io.BytesIO(raw.encode())), purpose="batch")


def wait(client: OpenAI, batch_id: str, timeout: float = 20.0) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} still {batch.status}")


def jsonl(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()] if file_id else []


def test_official_client_batch_flow(client: OpenAI) -> None:
    lines = [chat_line(f"req-{i}", "a good film" if i % 3 else "a bad film") for i in range(12)]
    file = upload(client, lines)
    assert file.object == "file" and file.purpose == "batch" and file.filename == "requests.jsonl"
    assert client.files.retrieve(file.id).bytes == file.bytes
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"job": "flow"})
    assert batch.status == "validating" and batch.request_counts.total == 12 and batch.metadata == {"job": "flow"}
    assert batch.expires_at == batch.created_at + 24 * 3600 and batch.output_file_id is None

    done = wait(client, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)
    assert batch.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.cancelled_at is None and done.cancelling_at is None and done.failed_at is None

    out = jsonl(client, done.output_file_id)
    assert [line["custom_id"] for line in out] == [f"req-{i}" for i in range(12)]  # input order
    first = out[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["id"].startswith("batch_req_") and first["response"]["status_code"] == 200
    assert first["response"]["request_id"].startswith("req_")
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "negative"
    assert body["annotation"]["label"] == "negative" and len(body["annotation"]["votes"]) == 3
    assert body["usage"]["cost_usd"] > 0
    assert out[1]["response"]["body"]["annotation"]["label"] == "positive"
    result = client.files.retrieve(done.output_file_id)
    assert result.purpose == "batch_output" and result.bytes == len(client.files.content(result.id).content)
    assert client.files.content(file.id).text.splitlines()[0] == json.dumps(lines[0])


def test_completions_endpoint_and_passthrough_lines(client: OpenAI) -> None:
    lines = [{"custom_id": "ens", "method": "POST", "url": "/v1/completions",
              "body": {"model": "crowd", "labels": LABELS, "prompt": "so good"}},
             {"custom_id": "member", "method": "POST", "url": "/v1/completions",
              "body": {"model": "bb", "prompt": "bad, plain proxying", "max_tokens": 3}}]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/completions",
                                  completion_window="24h")
    done = wait(client, batch.id)
    out = {line["custom_id"]: line["response"] for line in jsonl(client, done.output_file_id)}
    assert out["ens"]["body"]["object"] == "text_completion" and out["ens"]["body"]["choices"][0]["text"] == "positive"
    assert out["member"]["status_code"] == 200 and out["member"]["body"]["choices"][0]["text"] == "negative"
    assert "annotation" not in out["member"]["body"]


def test_failed_lines_go_to_the_error_file_and_the_rest_completes(client: OpenAI) -> None:
    lines = [chat_line("ok-1", "good"), chat_line("no-labels", "good", labels=None),
             chat_line("quorum", "zzz"), chat_line("stream", "good", stream=True),
             chat_line("no-messages", "x", messages=[]), chat_line("ok-2", "bad")]
    done = wait(client, client.batches.create(input_file_id=upload(client, lines).id,
                                              endpoint="/v1/chat/completions", completion_window="24h").id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (2, 4)
    assert [line["custom_id"] for line in jsonl(client, done.output_file_id)] == ["ok-1", "ok-2"]
    errors = {line["custom_id"]: line["response"] for line in jsonl(client, done.error_file_id)}
    assert list(errors) == ["no-labels", "quorum", "stream", "no-messages"]
    assert errors["no-labels"]["status_code"] == 400
    assert errors["no-labels"]["body"]["error"]["code"] == "missing_labels"
    assert errors["quorum"]["status_code"] == 503 and errors["quorum"]["body"]["error"]["code"] == "quorum_not_met"
    assert errors["stream"]["body"]["error"]["param"] == "stream"
    assert errors["no-messages"]["body"]["error"]["param"] == "messages"


def test_list_paginates_newest_first(client: OpenAI, gateway: InProcessGateway) -> None:
    file = upload(client, [chat_line("x", "good")])
    made = [client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h").id for _ in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    raw = gateway.get("/v1/batches", params={"limit": 2, "after": made[1]}).json()
    assert raw["object"] == "list" and raw["first_id"] == made[0] and raw["data"][0]["id"] == made[0]
    assert raw["last_id"] == raw["data"][-1]["id"]
    listed = [b.id for b in client.batches.list(limit=2)]  # the client follows `after` through every page
    assert listed[:3] == made[::-1] and len(listed) == len(set(listed))
    for bad in ({"limit": 0}, {"limit": 101}, {"after": "batch_nope"}):
        assert gateway.get("/v1/batches", params=bad).status_code == 400


def test_cancel_keeps_finished_lines_and_stops_the_rest(client: OpenAI) -> None:
    lines = [chat_line(f"c{i}", "good", model="slow") for i in range(40)]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    while client.batches.retrieve(batch.id).request_counts.completed < 4:
        time.sleep(0.02)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at >= done.cancelling_at and done.completed_at is None
    out = jsonl(client, done.output_file_id)
    assert 4 <= len(out) == done.request_counts.completed < 40 and done.request_counts.total == 40
    assert len({line["custom_id"] for line in out}) == len(out)
    assert client.batches.cancel(batch.id).status == "cancelled"  # idempotent
    finished = wait(client, client.batches.create(input_file_id=upload(client, [chat_line("y", "good")]).id,
                                                  endpoint="/v1/chat/completions", completion_window="24h").id)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(finished.id)


@pytest.mark.parametrize("lines, line_no, code", [
    ([chat_line("a", "good"), '{"custom_id": "b", "method": "POST",'], 2, "invalid_json"),
    ([chat_line("a", "good"), {"method": "POST", "url": "/v1/chat/completions", "body": {}}], 2,
     "missing_custom_id"),
    ([chat_line("a", "good"), chat_line("b", "x"), chat_line("a", "bad")], 3, "duplicate_custom_id"),
    ([{**chat_line("a", "good"), "url": "/v1/embeddings"}], 1, "invalid_url"),
    ([chat_line("a", "good"), {**chat_line("b", "x"), "body": "text"}], 2, "invalid_batch_input"),
    (["[1, 2]"], 1, "invalid_batch_input"),
])
def test_bad_input_lines_are_refused_at_upload_naming_the_line(client: OpenAI, lines: list[Any], line_no: int,
                                                               code: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        upload(client, lines)
    assert err.value.body["code"] == code and err.value.body["message"].startswith(f"line {line_no}:")


def test_upload_limits_and_purpose(client: OpenAI, gateway: InProcessGateway) -> None:
    big = [chat_line(f"r{i}", "good " * 40) for i in range(MAX_FILE // 250)]
    with pytest.raises(openai.APIStatusError) as err:
        upload(client, big)
    assert err.value.status_code == 413 and err.value.body["code"] == "file_too_large"
    with pytest.raises(openai.BadRequestError, match="no requests"):
        upload(client, ["", "  "])
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    assert err.value.body["param"] == "purpose"
    r = gateway.post("/v1/files", json={"purpose": "batch"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"


def test_batch_creation_checks_models_urls_and_files(client: OpenAI) -> None:
    file = upload(client, [chat_line("a", "good"), chat_line("b", "good"), chat_line("c", "x", model="gpt-9")])
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.body["code"] == "model_not_found" and err.value.body["message"].startswith("line 3:")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=file.id, endpoint="/v1/completions", completion_window="24h")
    assert err.value.body["code"] == "invalid_url" and err.value.body["message"].startswith("line 1:")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    assert err.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    ok = wait(client, client.batches.create(input_file_id=upload(client, [chat_line("a", "good")]).id,
                                            endpoint="/v1/chat/completions", completion_window="24h").id)
    done = client.batches.retrieve(ok.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):  # an output file is no batch input
        client.batches.create(input_file_id=done.output_file_id, endpoint="/v1/chat/completions",
                              completion_window="24h")
