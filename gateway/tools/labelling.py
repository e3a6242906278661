"""The one labelling client of the tools: items through a gateway ensemble with the official openai client,
as any client of the gateway would send them. Each answer goes to a callback as soon as it arrives, so
annotate can write it to disk at once and eval can keep it as a record; a failed item is an answer with
an error, never an exception that stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.tools import UsageError

ROWS_PER_CLIENT = 8
"""Rows in flight per client: httpcore's pool scans every connection for every queued request, so one
pool of 64 costs the client several ms of CPU per row; a small client per 8 rows does not."""


@dataclass(frozen=True, slots=True)
class Answer:
    index: int
    """Position of the item in the sequence given to `label_items`."""
    annotation: dict[str, Any] | None
    """The response's `annotation` block; None when the item failed."""
    cost_usd: float
    error: str | None


async def label_items(base_url: str, api_key: str, ensemble: str, items: Sequence[tuple[str, str]],
                      spec: dict[str, Any], on_answer: Callable[[Answer], None], *, concurrency: int = 8,
                      retries: int = 2, timeout: float = 600.0, service_tier: str | None = None,
                      cache: bool = True) -> None:
    """Ask `ensemble` for a label of every (item id, text); `spec` names the label set as clients do
    (`{"labels": [...]}` or `{"task": name}`). `service_tier="flex"` makes the items job traffic, whose
    member calls the gateway may group; `cache=False` asks every member, none answering from the gateway's
    response cache. Raises UsageError if the model answers without an annotation block (a member, not an
    ensemble)."""
    import openai

    todo = iter(enumerate(items))
    tier: dict[str, Any] = {"service_tier": service_tier} if service_tier else {}
    extra: dict[str, Any] = {**spec, **({} if cache else {"cache": False})}

    async def work(client: openai.AsyncOpenAI) -> None:
        for index, (item_id, text) in todo:
            try:
                reply = await client.chat.completions.create(
                    model=ensemble, messages=[{"role": "user", "content": text}],
                    extra_body={**extra, "item_id": item_id}, **tier)
            except openai.APIError as exc:
                on_answer(Answer(index, None, 0.0, exc.message))
                continue
            annotation = (reply.model_extra or {}).get("annotation")
            if annotation is None:
                raise UsageError(f"{ensemble!r} answered without an annotation block: name an ensemble")
            cost = (reply.usage.model_extra or {}).get("cost_usd", 0.0) if reply.usage else 0.0
            on_answer(Answer(index, annotation, cost, None))

    async with contextlib.AsyncExitStack() as clients:
        pool = [await clients.enter_async_context(openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=retries, timeout=timeout))
            for _ in range(-(-concurrency // ROWS_PER_CLIENT))]
        workers = [asyncio.create_task(work(pool[n // ROWS_PER_CLIENT])) for n in range(concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:  # one worker's UsageError (or Ctrl+C) stops the others before their clients close
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
