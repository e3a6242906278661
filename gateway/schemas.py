"""The OpenAI request schemas the gateway validates, as pydantic models in one place.

Extra fields are allowed (and forwarded): clients send provider-specific options, and the
gateway's own (`labels`, `task`, `item_id`) through `extra_body`. Validation failures become a
400 whose `param` names the offending field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gateway.errors import APIError


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    labels: list[str] | None = None
    task: str | None = None
    item_id: str | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    prompt: str | list[str]
    stream: bool = False
    labels: list[str] | None = None
    task: str | None = None
    item_id: str | None = None


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
