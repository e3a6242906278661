"""The OpenAPI document: FastAPI's, plus the request bodies its routes do not declare.

Why here and not with the routes: the completion routes are plain Starlette routes (for speed) and the feedback
handler reads its body itself, so FastAPI cannot see their request models; this adds them from the features'
protocols (gateway/completions/protocol.py, gateway/annotations/protocol.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.annotations.protocol import Feedback, FeedbackBatch
from gateway.completions.protocol import ChatCompletionRequest, CompletionRequest

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
