"""Batches through the official client, shared by the durability and outage tests and bench/: start one, follow it
to its end, read which lines came out, count the lines a gateway ran."""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from typing import Any

import httpx
from openai import OpenAI

from tests.harness.gateway import Gateway


def start_batch(client: OpenAI, n: int, first: int = 0) -> str:
    """A batch of `n` lines, items `item-{first}` on."""
    lines = [{"custom_id": f"item-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "crowd", "labels": ["yes", "no"], "item_id": f"item-{i}",
                       "messages": [{"role": "user", "content": f"sentence {i}"}]}} for i in range(first, first + n)]
    raw = "\n".join(json.dumps(line) for line in lines).encode()
    file = client.files.create(file=("items.jsonl", io.BytesIO(raw)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h").id


def finish(client: OpenAI, batch_id: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status == "completed":
            return batch
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} is still {batch.status}: {batch.request_counts}")


def custom_ids(client: OpenAI, batch: Any) -> Counter[str]:
    ids: Counter[str] = Counter()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            ids.update(json.loads(line)["custom_id"] for line in client.files.content(file_id).text.splitlines())
    return ids


def lines_run(gateway: Gateway) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    match = re.search(r'^crowd_gateway_batch_lines_total\{outcome="ok"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0
