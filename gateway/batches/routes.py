"""OpenAI's Files and Batches endpoints: what the official client's `files.*` and `batches.*` call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from gateway.batches.jsonl import ENDPOINTS, InputSummary, check_for_batch, parse_input
from gateway.batches.protocol import (
    batch_object,
    batch_record,
    file_object,
    file_record,
    list_page,
    new_file_id,
    now,
)
from gateway.batches.service import Batches
from gateway.batches.store import UnknownCursor
from gateway.errors import APIError, bad_request
from gateway.http import authorize, int_param, json_response, read_json, too_large
from gateway.state import GatewayState
from gateway.tenancy import DEFAULT

router = APIRouter()

_MULTIPART_SLACK = 64 * 1024
"""Room for the multipart envelope around a file of the maximum size."""


def _context(request: Request) -> tuple[GatewayState, Batches, str]:
    """The gateway, the batch service and the caller's tenant (who owns the files and batches it touches)."""
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    return state, request.app.state.batches, tenant


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the file exceeds the limit of {limit} bytes (batches.max_file_bytes)", param="file",
                    code="file_too_large")


async def _read_upload(request: Request, limit: int) -> tuple[str, str, bytes]:
    """(purpose, filename, content) of a multipart upload, refused as soon as it outgrows `limit`."""
    declared = request.headers.get("content-length", "")
    if too_large(declared, limit + _MULTIPART_SLACK):
        raise _too_large(limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "POST /v1/files takes multipart/form-data with the fields `file` and `purpose`",
                       code="invalid_content_type")

    async def bounded() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit + _MULTIPART_SLACK:
                raise _too_large(limit)
            yield chunk

    try:
        form = await MultiPartParser(request.headers, bounded(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise APIError(400, f"malformed multipart body: {exc.message}", code="invalid_multipart") from None
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "missing required parameter: file", param="file", code="missing_required_parameter")
        if not isinstance(purpose, str):
            raise APIError(400, "missing required parameter: purpose", param="purpose",
                           code="missing_required_parameter")
        content = await upload.read()
        filename = upload.filename or "upload.jsonl"
    finally:
        await form.close()
    if len(content) > limit:
        raise _too_large(limit)
    return purpose, filename, content


@router.post("/v1/files")
async def create_file(request: Request) -> Response:
    state, batches, tenant = _context(request)
    settings = state.config.batches
    purpose, filename, content = await _read_upload(request, settings.max_file_bytes)
    if purpose != "batch":
        raise bad_request(f"purpose {purpose!r} is not supported: this gateway stores files for the Batch API "
                          f"(purpose 'batch')", "purpose")
    # off the event loop: checking a large file takes long enough to stall every other request
    lines, summary = await asyncio.to_thread(parse_input, content, settings.max_lines)
    rec = file_record(new_file_id(), filename, purpose, len(content), state.config.store.retention_days * 86400,
                      lines=summary.lines, urls=summary.urls, models=summary.models, owner=tenant)
    await batches.store.put_file(rec, content, lines)
    return json_response(file_object(rec))


async def _file(batches: Batches, file_id: str, tenant: str, param: str = "id") -> dict[str, Any]:
    """The tenant's file; another tenant's is as absent as a file that does not exist."""
    rec = await batches.store.get_file(file_id)
    if rec is None or rec.get("owner", DEFAULT) != tenant:
        raise APIError(404, f"No such File object: {file_id}", param=param, code="file_not_found")
    return rec


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None, after: str | None = None, limit: str = "10000",
                     order: str = "desc") -> Response:
    """The caller's files, as OpenAI pages them (`after` a file id, `limit` up to 10,000, `order` by creation)."""
    _, batches, tenant = _context(request)
    page_size = int_param(limit, "limit", 1, 10000)
    if order not in ("asc", "desc"):
        raise bad_request("order must be 'asc' or 'desc'", "order")
    records = [rec for rec in await batches.store.list_files(tenant) if purpose is None or rec["purpose"] == purpose]
    if order == "asc":
        records.reverse()
    ids = [rec["id"] for rec in records]
    start = 0
    if after is not None:
        if after not in ids:
            raise bad_request(f"after {after!r} names no file of this list", "after")
        start = ids.index(after) + 1
    page = records[start:start + page_size]
    return json_response(list_page([file_object(rec) for rec in page], start + len(page) < len(records)))


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> Response:
    """OpenAI's FileDeleted; another tenant's file is a 404, as if it did not exist."""
    _, batches, tenant = _context(request)
    await _file(batches, file_id, tenant)
    deleted = await batches.store.delete_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": deleted})


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> Response:
    _, batches, tenant = _context(request)
    return json_response(file_object(await _file(batches, file_id, tenant)))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    _, batches, tenant = _context(request)
    await _file(batches, file_id, tenant)
    content = await batches.store.file_content(file_id)
    if content is None:
        raise APIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
    return Response(content, media_type="application/jsonl")


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or len(value) > 16
            or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                       for k, v in value.items())):
        raise bad_request("metadata must be an object of at most 16 string keys (64 characters) and string "
                          "values (512 characters)", "metadata")
    return value


@router.post("/v1/batches")
async def create_batch(request: Request) -> Response:
    state, batches, tenant = _context(request)
    body, _ = await read_json(state, request)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise APIError(400, f"missing required parameter: {name}", param=name, code="missing_required_parameter")
    endpoint = body["endpoint"]
    if endpoint not in ENDPOINTS:
        raise bad_request(f"endpoint {endpoint!r} is not supported: use one of {sorted(ENDPOINTS)}", "endpoint")
    if body["completion_window"] != "24h":
        raise bad_request("completion_window must be '24h'", "completion_window")
    metadata = _metadata(body.get("metadata"))
    file = await _file(batches, body["input_file_id"], tenant, "input_file_id")
    if file["purpose"] != "batch":
        raise bad_request(f"file {file['id']} has purpose {file['purpose']!r}; a batch's input needs purpose "
                          f"'batch'", "input_file_id")
    summary = InputSummary(lines=file["lines"], urls=file["urls"], models=file["models"])
    check_for_batch(summary, endpoint, set(state.annotators) | set(state.members))
    rec = {**batch_record(file["id"], endpoint, summary.lines, metadata), "owner": tenant}
    await batches.store.create_batch(rec)
    batches.worker.nudge()
    return json_response(batch_object(rec))


async def _batch(batches: Batches, batch_id: str, tenant: str) -> dict[str, Any]:
    rec = await batches.store.get_batch(batch_id)
    if rec is None or rec.get("owner", DEFAULT) != tenant:
        raise APIError(404, f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
    return rec


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request) -> Response:
    _, batches, tenant = _context(request)
    return json_response(batch_object(await _batch(batches, batch_id, tenant)))


@router.get("/v1/batches")
async def list_batches(request: Request, after: str | None = None, limit: str = "20") -> Response:
    _, batches, tenant = _context(request)
    page_size = int_param(limit, "limit", 1, 100)
    try:
        records, has_more = await batches.store.list_batches(after, page_size, tenant)
    except UnknownCursor:
        raise bad_request(f"after {after!r} names no batch of this gateway", "after") from None
    return json_response(list_page([batch_object(rec) for rec in records], has_more))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> Response:
    """Stops new lines at once; lines already running finish and appear in the output (OpenAI's semantics)."""
    _, batches, tenant = _context(request)
    await _batch(batches, batch_id, tenant)
    cancelled = await batches.store.transition(batch_id, ("validating", "in_progress"), "cancelling",
                                               cancelling_at=now())
    rec = await _batch(batches, batch_id, tenant)
    if not cancelled and rec["status"] not in ("cancelling", "cancelled"):
        raise APIError(409, f"cannot cancel batch {batch_id}: its status is {rec['status']!r}",
                       code="batch_not_cancellable")
    batches.worker.nudge()
    return json_response(batch_object(rec))
