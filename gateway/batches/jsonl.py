"""Validation of a batch input file, line by line, so a bad file is refused before any line runs.

What can be known at upload (JSON, `custom_id`, duplicates, `method`/`url`, `body`) is checked at
upload; what needs the batch or the config (does each `url` match the batch's endpoint, does each
`model` exist) is checked at batch creation from the summary kept here. Every refusal is a 400
whose message starts with the 1-based line number.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import orjson

from gateway.errors import APIError
from gateway.task import Kind

ENDPOINTS: dict[str, tuple[Kind, str]] = {"/v1/chat/completions": ("chat", "/chat/completions"),
                                          "/v1/completions": ("completion", "/completions")}


@dataclass
class InputSummary:
    """First line on which each url and each model appears: enough to check a batch without rereading."""

    lines: int = 0
    urls: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)


def line_error(number: int, message: str, code: str = "invalid_batch_input") -> APIError:
    return APIError(400, f"line {number}: {message}", param="file", code=code)


def parse_input(content: bytes, max_lines: int) -> tuple[list[bytes], InputSummary]:
    """The request lines of a JSONL batch file (blank lines skipped) and their summary."""
    lines: list[bytes] = []
    summary = InputSummary()
    seen: dict[str, int] = {}
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise line_error(number, f"not valid JSON ({exc})", "invalid_json") from None
        if not isinstance(request, dict):
            raise line_error(number, "each line must be a JSON object")
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise line_error(number, "custom_id is missing: every request needs a unique, non-empty string "
                                     "custom_id", "missing_custom_id")
        if custom_id in seen:
            raise line_error(number, f"duplicate custom_id {custom_id!r} (first used on line {seen[custom_id]})",
                             "duplicate_custom_id")
        seen[custom_id] = number
        if request.get("method", "POST") != "POST":
            raise line_error(number, f"method {request.get('method')!r} is not supported: use POST")
        url = request.get("url")
        if url not in ENDPOINTS:
            raise line_error(number, f"url {url!r} is not supported: use one of {sorted(ENDPOINTS)}", "invalid_url")
        body = request.get("body")
        if not isinstance(body, dict):
            raise line_error(number, "body must be a JSON object holding the request")
        model = body.get("model")
        summary.urls.setdefault(url, number)
        summary.models.setdefault(model if isinstance(model, str) else "", number)
        lines.append(raw)
        if len(lines) > max_lines:
            raise line_error(number, f"the file holds more than {max_lines} requests, the limit of this gateway",
                             "too_many_requests")
    if not lines:
        raise APIError(400, "the file holds no requests: one JSON request per line is expected", param="file",
                       code="empty_file")
    summary.lines = len(lines)
    return lines, summary


def check_for_batch(summary: InputSummary, endpoint: str, models: Collection[str]) -> None:
    """Refuse a batch whose lines name another endpoint or a model the gateway does not serve."""
    for url, number in sorted(summary.urls.items(), key=lambda item: item[1]):
        if url != endpoint:
            raise line_error(number, f"url {url!r} differs from the batch endpoint {endpoint!r}: every request of "
                                     f"a batch must use the batch's endpoint", "invalid_url")
    for model, number in sorted(summary.models.items(), key=lambda item: item[1]):
        if model not in models:
            what = f"the model {model!r} does not exist" if model else "body.model is missing"
            raise line_error(number, f"{what}: it must name an ensemble or member of this gateway "
                                     f"(GET /v1/models lists them)", "model_not_found")
