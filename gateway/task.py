"""From an OpenAI-shaped body to an annotation task: the item, its label set, ids and template.

The label set comes from, first found: `labels` in the body, a `response_format` JSON schema with
one enum property, vLLM's `structured_outputs.choice`, or the named `task` of the config. Whatever
order and case the client lists it in, the task carries its canonical form too (ensembles/labels.py):
the schema, item id, votes and fits use that; the prompt and the answer use the client's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ensembles.labels import LabelSet, check_label_set
from gateway.asking.prompts import Template
from gateway.config import Config
from gateway.errors import APIError, bad_request

Kind = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True)
class AnnotationTask:
    kind: Kind
    label_set: LabelSet
    text: str
    """The item to label: the last user message, or the completion prompt."""
    body: Mapping[str, Any]
    """The client's body, forwarded (constrained) to members that have no template."""
    template: Template | None
    schema: str
    """Task name, or a hash of the label set: votes on one schema are comparable."""
    item_id: str
    json_field: str | None = None
    """When the labels came from a JSON schema, the property the answer must be wrapped in."""
    job: bool = False
    """Job traffic (a batch line, or `service_tier: "flex"`): its members' calls may wait to be grouped."""
    cache_tenant: str | None = None
    """The tenant whose cached votes may answer this item (gateway/response_cache.py); None: ask every member."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The canonical label set: votes, distributions and stored records are in this order and spelling."""
        return self.label_set.canonical


def build_task(body: Mapping[str, Any], kind: Kind, config: Config, job: bool = False,
               tenant: str | None = None) -> AnnotationTask:
    """Validate the annotation-specific parts of a body; raises APIError(400) naming the param.

    `job`: the body is a batch line; a request says it is job traffic itself with `service_tier: "flex"`.
    `tenant`: whose cached votes may answer (None: none may); the config's `cache.enabled` and the body's
    `cache: false` turn the cache off.
    """
    task_name = body.get("task")
    task = None
    if task_name is not None:
        if not isinstance(task_name, str) or (task := config.task(task_name)) is None:
            known = [t.name for t in config.tasks]
            raise APIError(400, f"unknown task {task_name!r}; configured tasks: {known}", param="task",
                           code="task_not_found")
    label_set, json_field = _label_set(body, task.labels if task else None, config)
    text = _item_text(body, kind)
    schema = task.name if task else schema_for_labels(label_set.canonical)
    item_id = body.get("item_id") or _metadata_item_id(body) or "item-" + _digest(schema + "\x1e" + text)[:20]
    if (problem := item_id_problem(item_id)) is not None:
        raise bad_request(problem, "item_id")
    return AnnotationTask(kind=kind, label_set=label_set, text=text, body=body, template=task, schema=schema,
                          item_id=item_id, json_field=json_field, job=job or body.get("service_tier") == "flex",
                          cache_tenant=tenant if config.cache.enabled and body.get("cache") is not False else None)


def _label_set(body: Mapping[str, Any], task_labels: Sequence[str] | None,
               config: Config) -> tuple[LabelSet, str | None]:
    """The body's label set (a named task's when the body has none). With a task, labels in the body must name
    the task's own labels (any order or case): its schema's votes are stored in the task's labels."""
    limits = config.gateway.max_labels, config.gateway.max_label_chars
    found: tuple[str, Any, str | None] | None = None
    if (labels := body.get("labels")) is not None:
        found = "labels", labels, None
    elif (fmt := body.get("response_format")) is not None and (enum := _enum_from_response_format(fmt)) is not None:
        found = "response_format", enum[1], enum[0]
    elif isinstance(outputs := body.get("structured_outputs"), Mapping) and outputs.get("choice") is not None:
        found = "structured_outputs.choice", outputs["choice"], None
    if found is not None:
        param, values, field = found
        asked = checked_labels(values, param, *limits)
        if task_labels is None:
            return LabelSet.adhoc(asked), field
        try:
            return LabelSet.matching(task_labels, asked), field
        except ValueError as exc:
            raise bad_request(f"{param} {exc}: the label set of task {body.get('task')!r}; send the task's labels "
                              f"(in any order or case) or none", param) from None
    if task_labels is not None:
        return LabelSet.matching(task_labels, task_labels), None
    raise APIError(400, "no label set: send `labels` (extra_body), a response_format JSON schema with one enum "
                        "property, structured_outputs.choice, or a configured `task`", param="labels",
                   code="missing_labels")


def checked_labels(labels: Any, param: str, max_labels: int = 1000, max_chars: int = 200) -> tuple[str, ...]:
    """A client's label set, checked in linear time, within the configured count and length caps."""
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise bad_request(f"{param} must be a list of strings", param)
    if len(labels) > max_labels:
        raise bad_request(f"{param} has {len(labels)} labels; at most {max_labels} are accepted "
                          f"(gateway.max_labels)", param)
    if any(len(label) > max_chars for label in labels):
        raise bad_request(f"{param}: a label is longer than {max_chars} characters (gateway.max_label_chars)", param)
    try:
        return tuple(check_label_set(labels))
    except ValueError as exc:
        raise bad_request(f"{param}: {exc}", param) from None


def schema_for_labels(canonical: Sequence[str]) -> str:
    """The schema of an ad-hoc label set, from its canonical form (LabelSet.canonical): the same labels in any
    order or case are one schema, so their votes are comparable across requests."""
    return "labels-" + _digest("\x1f".join(canonical))[:12]


def _enum_from_response_format(fmt: Any) -> tuple[str, list[Any]] | None:
    """`{"type": "json_schema", "json_schema": {"schema": {"properties": {p: {"enum": [...]}}}}}`."""
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if not isinstance(spec, Mapping):
        raise bad_request("response_format.json_schema must be an object", "response_format.json_schema")
    schema = spec.get("schema") or {}
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return None
    enums = [(name, p["enum"]) for name, p in props.items() if isinstance(p, Mapping) and "enum" in p]
    if len(enums) != 1 or len(props) != 1:
        return None
    return enums[0]


def _item_text(body: Mapping[str, Any], kind: Kind) -> str:
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad_request("prompt must be a non-empty string (one item per request)", "prompt")
        return prompt
    for message in reversed(body["messages"]):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    raise bad_request("messages must contain a user message holding the item to label", "messages")


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        if not all(isinstance(p.get("text"), str) for p in parts):
            raise bad_request("a text content part needs a string `text`", "messages")
        return "\n".join(p["text"] for p in parts)
    return ""


RESERVED_ITEM_IDS = frozenset({"params", "feedback", "refit", ".", ".."})
"""Names of the routes beside `GET /v1/annotations/{item_id}` (and URL dot segments): an item so named could be
stored but never read back."""


def item_id_problem(item_id: object) -> str | None:
    """Why a client's item id cannot be used, or None. `/` separates a tenant from its names (gateway/tenancy.py)
    and cannot be part of the `{item_id}` path segment either."""
    if not isinstance(item_id, str) or not 1 <= len(item_id) <= 256:
        return "item_id must be a non-empty string of at most 256 characters"
    if item_id in RESERVED_ITEM_IDS or "/" in item_id:
        return (f"item_id {item_id!r} is reserved: it must not contain '/' nor be one of "
                f"{', '.join(sorted(RESERVED_ITEM_IDS))}")
    return None


def _metadata_item_id(body: Mapping[str, Any]) -> str | None:
    metadata = body.get("metadata")
    return metadata.get("item_id") if isinstance(metadata, Mapping) else None


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def wrap_label(task: AnnotationTask, label: str) -> str:
    """The assistant content for a label: JSON when the client asked for a JSON schema."""
    if task.json_field is None:
        return label
    return orjson.dumps({task.json_field: label}).decode()
