"""Grouped member calls over real HTTP: a `crowd-gateway serve` process, the scripted upstream answering list
prompts as vLLM does, the official openai client. Job traffic (batch lines, `service_tier: "flex"`, the
annotate command) shares one call per member for up to `max_prompts` items; an interactive request keeps one
call per item and member. Each item still gets the vote of its own prompt."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.harness import BIN, Upstream, member

MEMBERS = ["g1", "g2", "g3"]
MAX_PROMPTS = 8


def script_upstream(upstream: Upstream) -> None:
    for name in MEMBERS:  # each prompt's one-pass vote follows the keyword of its own item
        upstream.script(name, keywords={"great": " positive", "awful": " negative"}, logprobs="answer")


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {"batches": {"concurrency": 64, "poll_s": 0.05, "grouping": {"max_prompts": MAX_PROMPTS,
                                                                        "max_wait_ms": 200}},
            "members": [member(upstream, n, price=(1.0, 1.0)) for n in MEMBERS],
            "ensembles": [{"name": "crowd", "members": MEMBERS, "quorum": 3}],
            "tasks": [{"name": "sent", "labels": ["positive", "negative"], "prompt_style": "completion",
                       "examples": [{"text": "A fine day.", "label": "positive"}]}]}


def item(i: int) -> tuple[str, str]:
    """(text, the label its keyword makes every member vote)"""
    return (f"a great film, number {i}", "positive") if i % 3 else (f"an awful film, number {i}", "negative")


def ask(client: OpenAI, i: int, **extra: Any) -> Any:
    return client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": item(i)[0]}],
                                          extra_body={"task": "sent", "item_id": f"it{i}"}, **extra)


def test_batch_lines_share_one_call_per_member_and_keep_their_own_votes(client: OpenAI,
                                                                          upstream: Upstream) -> None:
    n = 48
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "crowd", "task": "sent", "item_id": f"b{i}",
                       "messages": [{"role": "user", "content": item(i)[0]}]}} for i in range(n)]
    file = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(map(json.dumps, lines)).encode())),
                               purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(600):
        batch = client.batches.retrieve(batch.id)
        if batch.status in ("completed", "failed"):
            break
        time.sleep(0.05)
    assert batch.status == "completed" and batch.request_counts.completed == n
    out = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    for line in out:
        i = int(line["custom_id"][1:])
        annotation = line["response"]["body"]["annotation"]
        assert annotation["label"] == item(i)[1]
        assert [v["label"] for v in annotation["votes"]] == [item(i)[1]] * 3
        assert all(v["probs"] is not None and v["completion_tokens"] == 1 for v in annotation["votes"])
    for name in MEMBERS:
        seen = upstream.calls(name)
        assert seen["prompts"] == n
        assert n / MAX_PROMPTS <= seen["calls"] <= 2 * n / MAX_PROMPTS, seen["calls"]
        assert isinstance(seen["last"]["prompt"], list)
    assert batch.usage is not None
    assert batch.usage.input_tokens == 10 * n * 3 and batch.usage.output_tokens == n * 3, "usage shared out exactly"


def test_interactive_requests_keep_one_call_per_item(client: OpenAI, upstream: Upstream) -> None:
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: ask(client, i), range(12)))
    assert [a.choices[0].message.content for a in answers] == [item(i)[1] for i in range(12)]
    for name in MEMBERS:
        seen = upstream.calls(name)
        assert seen["calls"] == seen["prompts"] == 12 and isinstance(seen["last"]["prompt"], str)


def test_flex_requests_are_job_traffic_and_share_calls(client: OpenAI, upstream: Upstream) -> None:
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: ask(client, i, service_tier="flex"), range(12)))
    assert [a.choices[0].message.content for a in answers] == [item(i)[1] for i in range(12)]
    for name in MEMBERS:
        seen = upstream.calls(name)
        assert seen["prompts"] == 12 and seen["calls"] < 12


def test_an_unknown_service_tier_is_the_clients_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, 1, service_tier="cheapest")
    assert err.value.body["param"] == "service_tier"


def test_annotate_sends_job_traffic_unless_told_otherwise(gateway: Any, upstream: Upstream, tmp_path: Path) -> None:
    rows = 32
    source = tmp_path / "rows.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows((f"r{i}", item(i)[0]) for i in range(rows))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for tier, grouped in (("flex", True), ("default", False)):
        upstream.reset()
        script_upstream(upstream)
        out = tmp_path / f"out-{tier}.csv"
        done = subprocess.run([str(BIN / "crowd-gateway"), "annotate", str(source), "--task", "sent", "--ensemble",
                               "crowd", "--out", str(out), "--gateway", gateway.url, "--concurrency", "16",
                               *([] if tier == "flex" else ["--service-tier", tier])],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        with out.open(newline="") as fh:
            labelled = {row["id"]: row["crowd_label"] for row in csv.DictReader(fh)}
        assert labelled == {f"r{i}": item(i)[1] for i in range(rows)}
        seen = upstream.calls("g1")
        assert seen["prompts"] == rows
        assert (seen["calls"] < rows / 2) if grouped else (seen["calls"] == rows), (tier, seen["calls"])
