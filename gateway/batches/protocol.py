"""The Files and Batches wire objects, shaped exactly as OpenAI's `FileObject`, `Batch` and batch output lines.

Stored records are plain dicts (what the store keeps); these functions turn them into what the
official client parses, so the store never needs to know the wire format.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from typing import Any

import orjson

COMPLETION_WINDOW_S = 24 * 3600

Record = dict[str, Any]


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex[:24]}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex[:24]}"


def result_file_id(batch_id: str, which: str) -> str:
    """Deterministic, so a finalisation redone after a crash rewrites the same file, never a second one."""
    return "file-" + hashlib.blake2b(f"{batch_id}/{which}".encode(), digest_size=12).hexdigest()


def now() -> int:
    return int(time.time())


def file_record(file_id: str, filename: str, purpose: str, size: int, retention_s: float,
                **internal: Any) -> Record:
    """A file's record; `internal` holds what validation learnt (line count, urls, models), never sent."""
    created = now()
    return {"id": file_id, "bytes": size, "created_at": created, "filename": filename, "purpose": purpose,
            "expires_at": created + int(retention_s), **internal}


def file_object(rec: Record) -> dict[str, Any]:
    return {"id": rec["id"], "object": "file", "bytes": rec["bytes"], "created_at": rec["created_at"],
            "filename": rec["filename"], "purpose": rec["purpose"], "status": "processed",
            "status_details": None, "expires_at": rec.get("expires_at")}


def batch_record(input_file_id: str, endpoint: str, total: int, metadata: dict[str, str] | None) -> Record:
    created = now()
    return {"id": new_batch_id(), "endpoint": endpoint, "input_file_id": input_file_id, "completion_window": "24h",
            "status": "validating", "created_at": created, "expires_at": created + COMPLETION_WINDOW_S,
            "metadata": metadata, "total": total, "completed": 0, "failed": 0}


_STAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
           "cancelled_at")


def batch_object(rec: Record) -> dict[str, Any]:
    obj = {"id": rec["id"], "object": "batch", "endpoint": rec["endpoint"], "errors": None,
           "input_file_id": rec["input_file_id"], "completion_window": rec["completion_window"],
           "status": rec["status"], "output_file_id": rec.get("output_file_id"),
           "error_file_id": rec.get("error_file_id"), "created_at": rec["created_at"],
           "expires_at": rec["expires_at"]}
    obj.update({stamp: rec.get(stamp) for stamp in _STAMPS})
    obj["request_counts"] = {"total": rec["total"], "completed": rec["completed"], "failed": rec["failed"]}
    obj["metadata"] = rec.get("metadata")
    obj["usage"] = rec.get("usage")
    return obj


def batch_usage(lines: list[bytes]) -> dict[str, Any]:
    """OpenAI's Batch `usage`, summed over the output lines' `usage` (plus `cost_usd`, the gateway's extra).

    A passthrough line relays its member's body as is: a line whose usage cannot be read counts zero."""
    prompt = completion = 0
    cost = 0.0
    for raw in lines:
        body = orjson.loads(raw)["response"]["body"]
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            continue
        try:
            tokens = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                      float(usage.get("cost_usd") or 0.0))
        except (TypeError, ValueError):
            continue
        prompt, completion, cost = prompt + tokens[0], completion + tokens[1], cost + tokens[2]
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion,
            "cost_usd": round(cost, 12)}


def list_page(objects: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": objects, "first_id": objects[0]["id"] if objects else None,
            "last_id": objects[-1]["id"] if objects else None, "has_more": has_more}


def output_line(custom_id: str, status: int, body: bytes) -> bytes:
    """One line of the output (or error) file: the full response body, `annotation` block included."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = {"error": {"message": body[:500].decode(errors="replace"), "type": "upstream_error",
                            "param": None, "code": "invalid_upstream_body"}}
    line = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": f"req_{secrets.token_hex(12)}", "body": parsed},
            "error": None}
    return orjson.dumps(line) + b"\n"
