"""Render an annotation item into the prompt a crowd worker sees (chat messages or completion text).

Why one place: the gateway, the benchmarks and the template-tuning scripts must build byte-identical
prompts, or measured worker accuracy would not carry over to serving. Tiny models (135M-270M) are
near chance zero-shot and near perfect with a few labeled examples, so examples are first-class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str
    label: str


class Template(BaseModel):
    """How a worker is prompted: the same model with two templates is two crowd workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    instructions: str = ""
    examples: list[Example] = Field(default_factory=list)
    prompt_style: Literal["chat", "completion"] = "chat"
    descriptions: dict[str, str] = Field(default_factory=dict)
    """What a label means, shown under the instructions (`acq: mergers and acquisitions`): ids that say little to
    a small model get their meaning, answers keep the ids."""
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(8, ge=1, le=4096)
    max_text_chars: int | None = Field(None, ge=1)
    """The item's text is cut to this many characters (at a word) in the prompt: a long document costs prompt tokens
    in proportion, may not fit a small model's context, and its beginning (a headline, a lead) carries its topic."""


class Variant(BaseModel):
    """Another wording of a task's prompt: its own instructions and/or examples (other subsets, other orders).

    Why: workers built from one model and one prompt share their mistakes; the same model prompted
    differently is the cheapest way to get a crowd whose errors are less correlated.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    instructions: str | None = None
    examples: list[Example] | None = None


def with_variant(template: Template, variant: Variant | None, prompt_style: str | None) -> Template:
    """The template a worker uses: the task's, with its variant's wording and its own prompt style."""
    update: dict[str, object] = {}
    if variant is not None and variant.instructions is not None:
        update["instructions"] = variant.instructions
    if variant is not None and variant.examples is not None:
        update["examples"] = variant.examples
    if prompt_style is not None:
        update["prompt_style"] = prompt_style
    return template.model_copy(update=update) if update else template


DEFAULT_INSTRUCTIONS = "Classify the text. Answer with exactly one label: {labels}."
_WHITESPACE = re.compile(r"\s+")


def render_instructions(template: Template, labels: Sequence[str]) -> str:
    """The template's instructions with `{labels}` replaced by the comma-separated label set, then one line per
    label the template describes (`- label: description`)."""
    text = (template.instructions or DEFAULT_INSTRUCTIONS).replace("{labels}", ", ".join(labels)).strip()
    if not template.descriptions:
        return text
    meaning = {label.casefold(): what for label, what in template.descriptions.items()}
    lines = [f"- {label}: {meaning[label.casefold()]}" for label in labels if label.casefold() in meaning]
    return "\n".join([text, *lines])


def examples_for(template: Template, labels: Sequence[str]) -> list[Example]:
    """The template's examples whose label is in the label set (any case): a member's own template serves any
    label set a request sends, and an example of another label set would teach the model a label it may not give."""
    wanted = {label.casefold() for label in labels}
    return [example for example in template.examples if example.label.casefold() in wanted]


def render_chat(template: Template, text: str, labels: Sequence[str]) -> list[dict[str, str]]:
    """System instructions, each example as a user/assistant turn pair, then the item as a user turn."""
    messages = [{"role": "system", "content": render_instructions(template, labels)}]
    for example in examples_for(template, labels):
        messages.append({"role": "user", "content": one_line(example.text)})
        messages.append({"role": "assistant", "content": example.label})
    messages.append({"role": "user", "content": one_line(cut(text, template.max_text_chars))})
    return messages


def render_completion(template: Template, text: str, labels: Sequence[str]) -> str:
    """Instructions, blank line, `Text: ...\\nLabel: ...` blocks, ending in `Text: {item}\\nLabel:`.

    The model continues after `Label:`; the gateway constrains that continuation to the label set.
    """
    return completion_prefix(template, labels) + completion_item(cut(text, template.max_text_chars))


def completion_prefix(template: Template, labels: Sequence[str]) -> str:
    """What every item's completion prompt starts with: instructions and examples (an engine's prefix cache
    keeps it; the gateway renders it once per worker and label set)."""
    parts = [render_instructions(template, labels), ""]
    for example in examples_for(template, labels):
        parts.append(f"Text: {one_line(example.text)}\nLabel: {example.label}\n")
    return "\n".join(parts) + "\n"


def completion_item(text: str) -> str:
    """The end of a completion prompt: the item, then `Label:` for the model to continue."""
    return f"Text: {one_line(text)}\nLabel:"


def cut(text: str, limit: int | None) -> str:
    """`text`, or its first `limit` characters up to the last whole word, with an ellipsis."""
    if limit is None or len(text) <= limit:
        return text
    head = text[:limit]
    if not (head[-1].isspace() or text[limit].isspace()) and len(head.split()) > 1:
        head = head.rsplit(None, 1)[0]  # the last word was cut in the middle
    return head.rstrip() + " ..."


def one_line(text: str) -> str:
    """Collapse whitespace so an item cannot break the `Text:`/`Label:` layout with its own newlines."""
    return _WHITESPACE.sub(" ", text).strip()
