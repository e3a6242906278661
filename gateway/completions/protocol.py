"""Every wire schema of the gateway's own routes in one place: requests validated, answers built.

Requests: the OpenAI completion bodies (extra fields are allowed and forwarded: clients send
provider-specific options, and the gateway's own `labels`, `task`, `item_id`, `cache` through
`extra_body`) and feedback. Validation failures become a 400 whose `param` names the field.
Answers: a normal ChatCompletion (or Completion) plus the `annotation` block; every standard field
stays valid for the OpenAI SDK, and the extras (`annotation`, `usage.cost_usd`) reach clients
through `model_extra`. The Files and Batches objects live in their wing, `gateway/batches/protocol.py`.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.json_schema import models_json_schema

from ensembles.labels import LabelSet
from gateway.errors import APIError
from gateway.task import AnnotationTask, item_id_problem, wrap_label

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


class Feedback(BaseModel):
    """`POST /v1/annotations/feedback`: a gold or human label for one item."""

    model_config = ConfigDict(extra="forbid")
    item_id: str
    label: str = Field(min_length=1)
    source: Literal["gold", "human"]
    annotator: str = Field("anonymous", min_length=1, max_length=128)
    task: str | None = None
    labels: list[str] | None = None

    @field_validator("item_id")
    @classmethod
    def _usable_id(cls, item_id: str) -> str:
        if (problem := item_id_problem(item_id)) is not None:
            raise ValueError(problem)
        return item_id


_ADAPTERS = {"chat": TypeAdapter(ChatCompletionRequest), "completion": TypeAdapter(CompletionRequest)}


def validate_body(body: Any, kind: Literal["chat", "completion"]) -> None:
    """Raise APIError(400) naming the first invalid field; the dict itself is used downstream."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_body")
    try:
        _ADAPTERS[kind].validate_python(body)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> APIError:
    """A 400 naming the first invalid field of a pydantic validation error."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    what = "missing required parameter" if err["type"] == "missing" else err["msg"]
    return APIError(400, f"{param}: {what}" if param else what, param=param,
                    code="missing_required_parameter" if err["type"] == "missing" else "invalid_value")


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


def annotation_block(outcome: Outcome, task: AnnotationTask, aggregator: str, params_version: int,
                     votes: list[dict[str, Any]]) -> dict[str, Any]:
    """The `annotation` object, in the client's spelling and order of its labels (the outcome is canonical).

    `votes` are the outcome's votes on the wire, canonical (what the store keeps): shared as they are when the
    client listed the canonical labels, respelt copies otherwise."""
    labels = task.label_set
    return {
        "label": labels.spelled(outcome.label),
        "confidence": round(outcome.confidence, 6),
        "distribution": {label: round(p, 6) for label, p in zip(labels.asked, labels.for_client(outcome.distribution))},
        "aggregator": aggregator,
        "params_version": params_version,
        "escalated": outcome.escalated,
        "needs_review": outcome.needs_review,
        "item_id": task.item_id,
        "schema": task.schema,
        "agreement": round(outcome.agreement, 6),
        "stop_reason": outcome.stop_reason,
        "calls": outcome.calls,
        "votes": votes if labels.asked == labels.canonical else [_client_vote(dict(vote), labels) for vote in votes],
    }


def _client_vote(vote: dict[str, Any], labels: LabelSet) -> dict[str, Any]:
    """A vote's label and soft-vote probabilities as the client listed its labels."""
    if vote["label"] is not None:
        vote["label"] = labels.spelled(vote["label"])
    if vote["probs"] is not None:
        vote["probs"] = labels.for_client(vote["probs"])
    return vote


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
        return {"id": f"cmpl-{secrets.token_hex(16)}", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "annotation": annotation}
    return {"id": f"chatcmpl-{secrets.token_hex(16)}", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage, "annotation": annotation}


def stream_events(answer: dict[str, Any], include_usage: bool) -> list[bytes]:
    """A finished answer (`completion_body`) as the SSE events of OpenAI's streaming format, `[DONE]` last.

    Chat: a role chunk, the content chunk, the finish chunk; completions: the text chunk and the finish chunk.
    With `stream_options.include_usage` a last chunk with empty `choices` carries `usage` (as OpenAI sends it);
    the `annotation` block rides on the last chunk before `[DONE]` (the usage chunk, else the finish chunk), so
    a client that reads only the final chunk's extras finds it either way.
    """
    head = {"id": answer["id"], "object": "chat.completion.chunk" if answer["object"] == "chat.completion"
            else "text_completion", "created": answer["created"], "model": answer["model"]}
    choice = answer["choices"][0]
    if answer["object"] == "chat.completion":
        content = choice["message"]["content"]
        chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]},
                  {**head, "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None,
                                        "finish_reason": None}]},
                  {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}]
    else:
        chunks = [{**head, "choices": [{"index": 0, "text": choice["text"], "logprobs": None, "finish_reason": None}]},
                  {**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    chunks[-1]["annotation"] = answer["annotation"]
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]


MAX_BULK = 1000
"""Most feedback lines one request may carry."""


class FeedbackBatch(BaseModel):
    """`POST /v1/annotations/feedback` with many labels at once (checked before any is stored); documents the body,
    which the handler reads line by line to name the bad line."""

    data: list[Feedback] = Field(min_length=1, max_length=MAX_BULK)


_DOCUMENTED_BODIES: tuple[tuple[str, str, str], ...] = (
    ("/v1/chat/completions", "ChatCompletionRequest",
     "Label an item with an ensemble (`labels`, `task`, `item_id` via `extra_body`), or proxy to one member"),
    ("/v1/completions", "CompletionRequest",
     "Label a completion prompt with an ensemble, or proxy it to one member"),
)
_ERRORS = {"400": "invalid request (OpenAI error body, `param` names the field)", "401": "missing or invalid key",
           "404": "unknown model", "408": "the request did not arrive in time (gateway.connections)",
           "413": "body too large", "429": "overloaded: retry after `Retry-After`",
           "503": "quorum not met, or a member is unavailable"}


def document_routes(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document plus what FastAPI cannot see in it: the completion routes (plain Starlette routes,
    for speed) with their request models, and the feedback body (its handler reads one or many labels itself)."""
    models: list[type[BaseModel]] = [ChatCompletionRequest, CompletionRequest, Feedback, FeedbackBatch]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])

    def body(*names: str) -> dict[str, Any]:
        refs = [{"$ref": f"#/components/schemas/{name}"} for name in names]
        return {"required": True, "content": {"application/json": {"schema": refs[0] if len(refs) == 1
                                                                     else {"oneOf": refs}}}}

    for path, model, summary in _DOCUMENTED_BODIES:
        schema["paths"][path] = {"post": {
            "summary": summary, "operationId": path.strip("/").replace("/", "_"), "requestBody": body(model),
            "responses": {"200": {"description": "the completion (an ensemble's carries the `annotation` block and "
                                                 "`usage.cost_usd`), or with `stream: true` its SSE chunks",
                                  "content": {"application/json": {}, "text/event-stream": {}}},
                          **{status: {"description": why} for status, why in _ERRORS.items()}}}}
    schema["paths"]["/v1/annotations/feedback"]["post"]["requestBody"] = body("Feedback", "FeedbackBatch")
    return schema
