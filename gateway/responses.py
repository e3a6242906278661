"""The wire answer: a normal ChatCompletion (or Completion) plus the `annotation` block.

Every standard field stays valid for the OpenAI SDK; the extras (`annotation`, `usage.cost_usd`)
reach clients through `model_extra`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.annotate import Outcome
from gateway.task import AnnotationTask, wrap_label


def annotation_block(outcome: Outcome, task: AnnotationTask, aggregator: str, params_version: int) -> dict[str, Any]:
    return {
        "label": outcome.label,
        "confidence": round(outcome.confidence, 6),
        "distribution": {label: round(p, 6) for label, p in zip(task.labels, outcome.distribution)},
        "aggregator": aggregator,
        "params_version": params_version,
        "escalated": outcome.escalated,
        "needs_review": outcome.needs_review,
        "item_id": task.item_id,
        "schema": task.schema,
        "agreement": round(outcome.agreement, 6),
        "stop_reason": outcome.stop_reason,
        "calls": outcome.calls,
        "votes": [vote.wire() for vote in outcome.votes],
    }


def usage_block(outcome: Outcome) -> dict[str, Any]:
    prompt = sum(v.prompt_tokens for v in outcome.votes)
    completion = sum(v.completion_tokens for v in outcome.votes)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost_usd": round(outcome.cost_usd, 12)}


def completion_body(model: str, task: AnnotationTask, annotation: dict[str, Any],
                    usage: dict[str, Any]) -> dict[str, Any]:
    content = wrap_label(task, annotation["label"])
    created = int(time.time())
    if task.kind == "completion":
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "annotation": annotation}
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage, "annotation": annotation}
