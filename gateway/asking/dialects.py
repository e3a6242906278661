"""Shape one member's request for its server's dialect, so its answer can only be a label.

vLLM takes `structured_outputs: {"choice": [...]}` and returns token log-probabilities (soft
votes); llama.cpp's server takes a GBNF `grammar`; OpenAI-style providers take a json_schema
`response_format` with an enum. The prompt comes from the member's template, else the task's,
else the client's own messages are forwarded as they are. The prompt and the constraint list the labels
as the client did (its order and spelling); reading the answer back is case-insensitive (extract.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.asking.prompts import Template, Variant, completion_item, completion_prefix, cut, render_chat, with_variant
from gateway.config import Member
from gateway.task import AnnotationTask

TOP_LOGPROBS = 5
ONE_PASS_TOP_LOGPROBS = 20
"""Candidates for the first token in a one-pass vote (vLLM's default cap on log-probabilities is 20)."""
DEFAULT_MAX_TOKENS = 16
FORWARDED = ("temperature", "top_p", "seed", "stop", "max_tokens", "max_completion_tokens")


_MEMO_SIZE = 1024
_templates: dict[tuple[int, int], tuple[Member, Template, Template]] = {}
_prefixes: dict[tuple[int, tuple[str, ...]], tuple[Template, str]] = {}
"""Memos of what every vote would otherwise render again: keyed by object ids, checked by identity (an id can
be reused once its object is gone), emptied when full (label sets of ad-hoc requests are unbounded)."""


def prompt_template(member: Member, task: AnnotationTask) -> Template | None:
    """The worker's prompt: a named task's (in the member's variant and style), else the member's own."""
    if task.template is None:
        return member.template
    key = (id(member), id(task.template))
    found = _templates.get(key)
    if found is not None and found[0] is member and found[1] is task.template:
        return found[2]
    variants: dict[str, Variant] = getattr(task.template, "variants", {})
    template = with_variant(task.template, variants.get(member.variant or ""), member.prompt_style)
    if len(_templates) >= _MEMO_SIZE:
        _templates.clear()
    _templates[key] = (member, task.template, template)
    return template


_last_item: list[str] = ["", completion_item("")]
"""The last item's rendered text: an item's members are asked one after another, and each would render it."""


def _completion_prompt(template: Template, text: str, labels: tuple[str, ...]) -> str:
    key = (id(template), labels)
    found = _prefixes.get(key)
    if found is None or found[0] is not template:
        if len(_prefixes) >= _MEMO_SIZE:
            _prefixes.clear()
        found = _prefixes[key] = (template, completion_prefix(template, labels))
    if template.max_text_chars is not None:
        return found[1] + completion_item(cut(text, template.max_text_chars))
    if _last_item[0] is not text:
        _last_item[:] = [text, completion_item(text)]
    return found[1] + _last_item[1]


def one_pass(member: Member, task: AnnotationTask) -> bool:
    """Whether `member` answers `task` in one forward pass (see `Member.decoding`)."""
    if member.decoding == "constrained" or member.dialect not in ("vllm", "llamacpp"):
        return False
    if member.decoding == "one_pass":
        return True
    template = prompt_template(member, task)
    return member.logprobs and template is not None and template.prompt_style == "completion"


def scoring_request(member: Member, asked: dict[str, Any], labels: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """(path, body) asking a vLLM member for the log-probability of each of `labels` after the completion prompt
    of `asked` (its one-pass request): the prompt alone and the prompt followed by each label, one forward pass
    each, with `prompt_logprobs` (extract.label_logprobs reads the answer). None where the dialect or a
    chat prompt offers no such call."""
    prompt = asked.get("prompt")
    if member.dialect != "vllm" or not isinstance(prompt, str):
        return None
    return "/completions", {"model": member.model, "prompt": [prompt, *(f"{prompt} {label}" for label in labels)],
                            "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}


def shape(member: Member, task: AnnotationTask, first_token: bool = False) -> tuple[str, bytes]:
    """(path under the member's base_url, JSON body) for asking `member` to label `task`."""
    path, body = request(member, task, first_token)
    return path, orjson.dumps(body)


def request(member: Member, task: AnnotationTask, first_token: bool = False) -> tuple[str, dict[str, Any]]:
    """(path under the member's base_url, body) for asking `member` to label `task`.

    `first_token`: one forward pass, the first token's top log-probabilities instead of a decoded label.
    """
    template = prompt_template(member, task)
    body: dict[str, Any] = {"model": member.model}
    if template is not None:
        kind = template.prompt_style
        if kind == "completion":
            body["prompt"] = _completion_prompt(template, task.text, task.label_set.asked)
        else:
            body["messages"] = render_chat(template, task.text, task.label_set.asked)
        body["temperature"] = template.temperature
        body["max_tokens"] = template.max_tokens
    else:
        kind = task.kind
        if kind == "completion":
            body["prompt"] = task.text
        else:
            body["messages"] = task.body["messages"]
        body.update((k, task.body[k]) for k in FORWARDED if k in task.body)
        body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    if first_token:
        body.update(max_tokens=1, temperature=0)
        body.pop("max_completion_tokens", None)
        if kind == "completion":
            body["logprobs"] = ONE_PASS_TOP_LOGPROBS
        else:
            body.update(logprobs=True, top_logprobs=ONE_PASS_TOP_LOGPROBS)
    else:
        _constrain(member, body, kind, task.label_set.asked, template)
    return ("/completions" if kind == "completion" else "/chat/completions"), body


def _constrain(member: Member, body: dict[str, Any], kind: str, labels: Sequence[str],
               template: Template | None) -> None:
    # After a completion prompt's "Label:" models want " positive": allow the space, fold() strips it.
    spaced = kind == "completion"
    if member.dialect == "vllm":
        body["structured_outputs"] = {"choice": [*labels, *(" " + label for label in labels)] if spaced
                                      else list(labels)}
        _ask_logprobs(member, body, kind)
    elif member.dialect == "llamacpp":
        body["grammar"] = gbnf_choice(labels, leading_space=spaced)
        _ask_logprobs(member, body, kind)
    elif kind == "chat":  # openai, litellm: JSON schema with an enum
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "label", "strict": True,
            "schema": {"type": "object", "properties": {"label": {"type": "string", "enum": list(labels)}},
                       "required": ["label"], "additionalProperties": False}}}
        body.pop("max_tokens", None)
        if template is None:
            body.pop("max_completion_tokens", None)


def _ask_logprobs(member: Member, body: dict[str, Any], kind: str) -> None:
    if not member.logprobs:
        return
    if kind == "completion":
        body["logprobs"] = TOP_LOGPROBS
    else:
        body["logprobs"] = True
        body["top_logprobs"] = TOP_LOGPROBS


def gbnf_choice(labels: Sequence[str], leading_space: bool = False) -> str:
    """A GBNF grammar whose only sentences are the labels (optionally after one space)."""
    quoted = (label.replace("\\", "\\\\").replace('"', '\\"') for label in labels)
    choice = " | ".join(f'"{q}"' for q in quoted)
    return f'root ::= " "? ({choice})' if leading_space else f"root ::= {choice}"
