"""The wire schemas of the completion routes in one place: requests validated, answers built.

Requests: the OpenAI completion bodies (extra fields are allowed and forwarded: clients send
provider-specific options, and the gateway's own `labels`, `task`, `item_id`, `cache` through
`extra_body`). Validation failures become a 400 whose `param` names the field.
Answers: an ensemble's is a normal ChatCompletion (or Completion) plus the `annotation` block; every standard
field stays valid for the OpenAI SDK, and the extras (`annotation`, `usage.cost_usd`) reach clients through
`model_extra`. The answer is typed (dataclasses: orjson writes them natively, at about the cost of the dicts
they replace, where pydantic models cost 5 to 10 times as much) and built in one place, `ensemble_reply`, and
sent in one place, `ensemble_answer` (JSON, or SSE chunks). A member's answer is relayed as it came
(gateway/completions/passthrough.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from ensembles.labels import LabelSet
from gateway.answer import SSE, Answer
from gateway.errors import APIError, invalid
from gateway.task import AnnotationTask, wrap_label

if TYPE_CHECKING:
    from gateway.annotate import Outcome


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _speaks(self) -> Message:
        if self.content is None and self.role in ("system", "developer", "user"):
            raise ValueError(f"a {self.role} message needs content")
        return self


class Sampling(BaseModel):
    """The forwarded sampling parameters, typed: a wrong one is the client's 400, not every member's failure."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    stream: bool = False
    labels: list[str] | None = None
    task: str | None = None
    item_id: str | None = None
    cache: bool | None = None
    """False: every member of the ensemble is asked, none answers from the response cache."""
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    """OpenAI's processing tiers; on an ensemble, "flex" makes the item job traffic (its calls may be grouped)."""


class ChatCompletionRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]


_ADAPTERS = {"chat": TypeAdapter(ChatCompletionRequest), "completion": TypeAdapter(CompletionRequest)}


def validate_body(body: Any, kind: Literal["chat", "completion"]) -> None:
    """Raise APIError(400) naming the first invalid field; the dict itself is used downstream."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_body")
    try:
        _ADAPTERS[kind].validate_python(body)
    except ValidationError as exc:
        raise invalid(exc) from None


_ONE_ANSWER = "an ensemble answers one label per item"
_REFUSED: tuple[tuple[str, str], ...] = (
    ("n", _ONE_ANSWER + " (n must be 1)"),
    ("best_of", _ONE_ANSWER + " (best_of must be 1)"),
    ("tools", "an ensemble answers with a label, never a tool call"),
    ("tool_choice", "an ensemble answers with a label, never a tool call"),
    ("functions", "an ensemble answers with a label, never a function call"),
    ("function_call", "an ensemble answers with a label, never a function call"),
    ("logprobs", "an ensemble has no token log-probabilities of its own: `annotation.distribution` carries the "
                 "probability of each label instead"),
    ("top_logprobs", "an ensemble has no token log-probabilities of its own: `annotation.distribution` carries "
                     "the probability of each label instead"),
    ("echo", "an ensemble answers with the label alone, not the prompt"),
)


def _asks_for(name: str, value: Any) -> bool:
    """Whether a field asks for something beyond its neutral value (n=1, tool_choice "none", logprobs false...)."""
    if value is None or value is False or value == [] or value == "none":
        return False
    return not (name in ("n", "best_of") and value == 1) and not (name in ("logprobs", "top_logprobs") and value == 0)


def refuse_unhonoured(body: dict[str, Any]) -> None:
    """400 for an ensemble body asking for what its answer cannot be: several choices, tool calls, token
    log-probabilities, an echoed prompt, or a JSON object without a label enum.

    Refused is only what would change the answer's meaning if ignored; sampling options (temperature, seed,
    max_tokens, stop...) go to the members and change nothing a client relies on. `response_format` of type
    json_object is refused because the content would be a bare label, not the JSON object the client parses;
    a json_schema with one enum property is the way to get `{"field": "label"}` (see gateway/task.py).
    A member (passthrough) gets every field unchanged.
    """
    for name, why in _REFUSED:
        if _asks_for(name, body.get(name)):
            raise APIError(400, f"{name} is not supported on an ensemble: {why}", param=name,
                           code="unsupported_parameter")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        raise APIError(400, "response_format json_object is not supported on an ensemble: its content is a label; "
                            "send a json_schema whose one property is an enum of the labels to get a JSON object",
                       param="response_format", code="unsupported_parameter")


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float


@dataclass
class Annotation:
    """The `annotation` block: in the client's spelling and order of its labels (the outcome is canonical)."""

    label: str
    confidence: float
    distribution: dict[str, float]
    aggregator: str
    params_version: int
    escalated: bool
    needs_review: bool
    item_id: str
    schema: str
    agreement: float
    stop_reason: str
    calls: int
    votes: list[dict[str, Any]]
    stored: bool
    """Whether the store kept the votes (False: an outage; the answer is sent anyway)."""


@dataclass(kw_only=True)
class ChatMessage:
    role: str = "assistant"
    content: str
    refusal: None = None


@dataclass(kw_only=True)
class ChatChoice:
    index: int = 0
    message: ChatMessage
    logprobs: None = None
    finish_reason: str = "stop"


@dataclass(kw_only=True)
class TextChoice:
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str = "stop"


@dataclass
class EnsembleReply:
    """An ensemble's ChatCompletion (`object: chat.completion`) or Completion (`text_completion`)."""

    id: str
    object: Literal["chat.completion", "text_completion"]
    created: int
    model: str
    choices: list[ChatChoice] | list[TextChoice]
    usage: Usage
    annotation: Annotation

    @property
    def content(self) -> str:
        choice = self.choices[0]
        return choice.message.content if isinstance(choice, ChatChoice) else choice.text


def ensemble_reply(model: str, task: AnnotationTask, outcome: Outcome, aggregator: str, params_version: int,
                   votes: list[dict[str, Any]], stored: bool) -> EnsembleReply:
    """The whole answer to one annotated item. `votes` are the outcome's votes on the wire, canonical (what the
    store keeps): shared as they are when the client listed the canonical labels, respelt copies otherwise."""
    labels = task.label_set
    label = labels.spelled(outcome.label)
    annotation = Annotation(
        label=label, confidence=round(outcome.confidence, 6),
        distribution={name: round(p, 6) for name, p in zip(labels.asked, labels.for_client(outcome.distribution))},
        aggregator=aggregator, params_version=params_version, escalated=outcome.escalated,
        needs_review=outcome.needs_review, item_id=task.item_id, schema=task.schema,
        agreement=round(outcome.agreement, 6), stop_reason=outcome.stop_reason, calls=outcome.calls,
        votes=votes if labels.asked == labels.canonical else [_client_vote(dict(vote), labels) for vote in votes],
        stored=stored)
    prompt = sum(v.prompt_tokens for v in outcome.votes)
    completion = sum(v.completion_tokens for v in outcome.votes)
    usage = Usage(prompt, completion, prompt + completion, round(outcome.cost_usd, 12))
    content = wrap_label(task, label)
    created = int(time.time())
    if task.kind == "completion":
        return EnsembleReply(f"cmpl-{secrets.token_hex(16)}", "text_completion", created, model, [TextChoice(text=content)],
                             usage, annotation)
    return EnsembleReply(f"chatcmpl-{secrets.token_hex(16)}", "chat.completion", created, model,
                         [ChatChoice(message=ChatMessage(content=content))], usage, annotation)


def _client_vote(vote: dict[str, Any], labels: LabelSet) -> dict[str, Any]:
    """A vote's label and soft-vote probabilities as the client listed its labels."""
    if vote["label"] is not None:
        vote["label"] = labels.spelled(vote["label"])
    if vote["probs"] is not None:
        vote["probs"] = labels.for_client(vote["probs"])
    return vote


def ensemble_answer(reply: EnsembleReply, body: dict[str, Any]) -> Answer:
    """The reply as it is sent: JSON, or with `stream: true` its SSE chunks; with the `x-crowd-*` headers and what
    it spent."""
    annotation, usage = reply.annotation, reply.usage
    headers = {"x-crowd-confidence": f"{annotation.confidence:.6f}", "x-crowd-cost-usd": f"{usage.cost_usd:.10f}",
               "x-crowd-stop-reason": annotation.stop_reason,
               "x-crowd-votes-stored": "true" if annotation.stored else "false"}
    spent = (usage.total_tokens, usage.cost_usd)
    if not body.get("stream"):
        return Answer(200, orjson.dumps(reply), headers, spent=spent)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return Answer(200, headers={**headers, "Cache-Control": "no-cache"}, media_type=SSE,
                  stream=_sent(stream_events(reply, include_usage)), spent=spent)


async def _sent(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def stream_events(reply: EnsembleReply, include_usage: bool) -> list[bytes]:
    """A finished answer as the SSE events of OpenAI's streaming format, `[DONE]` last.

    Chat: a role chunk, the content chunk, the finish chunk; completions: the text chunk and the finish chunk.
    With `stream_options.include_usage` a last chunk with empty `choices` carries `usage` (as OpenAI sends it);
    the `annotation` block rides on the last chunk before `[DONE]` (the usage chunk, else the finish chunk), so
    a client that reads only the final chunk's extras finds it either way.
    """
    chat = reply.object == "chat.completion"
    head = {"id": reply.id, "object": "chat.completion.chunk" if chat else "text_completion", "created": reply.created,
            "model": reply.model}
    if chat:
        chunks: list[dict[str, Any]] = [
            {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {"content": reply.content}, "logprobs": None,
                                  "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}]
    else:
        chunks = [{**head, "choices": [{"index": 0, "text": reply.content, "logprobs": None, "finish_reason": None}]},
                  {**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": reply.usage})
    chunks[-1]["annotation"] = reply.annotation
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]
