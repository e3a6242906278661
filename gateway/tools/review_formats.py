"""The review queue in the formats of the labelling tools people already use, and their labels back.

Label Studio (https://labelstud.io/guide/task_format): a JSON list of tasks to import, `data` with the text and the
item id, the crowd's answer as a pre-annotation (`predictions`: a `choices` result, `model_version`, `score`),
the distribution and every vote in the task's `meta`; beside it the labelling config (a `Text` and a single
`Choices` of the label set) to create the project with. People's labels come back in Label Studio's JSON export:
each task's `annotations`, `completed_by` the annotator.

Argilla 2.x: a dataset directory as `Dataset.to_disk` writes it and `rg.Dataset.from_disk` reads it
(`.argilla/dataset.json`, `.argilla/settings.json`, `records.json`): a text field, one `LabelQuestion`, the crowd's
answer as a suggestion with its score, the distribution and every vote as metadata. People's labels come back in
`records.json` (`dataset.records.to_json(path)`, or a directory `to_disk` wrote): `responses`, with the annotator's
`user_id`. Argilla's JSON writer leaves a response's status out; where it is there, only `submitted` counts.

Written by hand on purpose: the gateway's tools do not depend on either SDK; the tests check both formats with the
official SDKs (label-studio-sdk, argilla).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from xml.sax.saxutils import quoteattr

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from gateway.tools import UsageError

FIELD, QUESTION = "text", "label"
"""The text's field (Label Studio object, Argilla field) and the question's name (Choices control, LabelQuestion)."""


@dataclass(frozen=True)
class ReviewItem:
    """One queued item as the gateway stores it, with its answer under the latest parameters (None: no valid vote)."""

    item_id: str
    schema: str
    text: str
    labels: list[str]
    votes: dict[str, str]
    """Member (people as `human:<who>`) -> its label; failed votes are left out."""
    answer: dict[str, Any] | None
    """label, confidence, distribution, aggregator, params_version."""


@dataclass(frozen=True)
class HumanLabel:
    item_id: str
    label: str
    annotator: str


class Format(Protocol):
    def export(self, schema: str, items: list[ReviewItem]) -> dict[str, str]:
        """Relative path -> content of what the tool imports for one schema's items."""

    def human_labels(self, path: Path) -> list[HumanLabel]:
        """The people's labels in the tool's export at `path`."""


Parsed = TypeVar("Parsed")


def _read(path: Path, shape: type[Parsed], what: str) -> Parsed:
    """The export at `path` as `shape` (the parts of the tool's format this module reads; the rest is ignored):
    a file that is not one is a one-line error naming where."""
    try:
        return TypeAdapter(shape).validate_json(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        raise UsageError(f"{path} is not {what}: {where}: {err['msg']}") from None


class _Data(BaseModel):
    item_id: str


class _Result(BaseModel):
    from_name: str = ""
    value: dict[str, Any] = {}

    @property
    def choice(self) -> str | None:
        """The one label chosen in the review's question, else None (another control, or several choices)."""
        choices = self.value.get("choices") if self.from_name == QUESTION else None
        return choices[0] if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], str) else None


class _Annotation(BaseModel):
    completed_by: int | str | dict[str, Any] | None = None
    was_cancelled: bool = False
    result: list[_Result] = []

    @property
    def annotator(self) -> str:
        who = self.completed_by
        return f"label-studio:{who.get('email') or who.get('id') if isinstance(who, dict) else who}"


class _Task(BaseModel):
    data: _Data
    annotations: list[_Annotation] = []


class _Response(BaseModel):
    value: Any
    user_id: str
    status: Literal["submitted", "draft", "discarded"] = "submitted"
    """Argilla's JSON writer leaves the status out."""


class _Record(BaseModel):
    id: str
    responses: dict[str, list[_Response]] = Field(default_factory=dict)


class LabelStudio:
    def export(self, schema: str, items: list[ReviewItem]) -> dict[str, str]:
        choices = "".join(f"\n    <Choice value={quoteattr(label)}/>" for label in items[0].labels)
        config = (f'<View>\n  <Text name="{FIELD}" value="${FIELD}"/>\n  <Choices name="{QUESTION}" '
                  f'toName="{FIELD}" choice="single" showInLine="true">{choices}\n  </Choices>\n</View>\n')
        return {f"{schema}.label-studio.json": json.dumps([self._task(item) for item in items], indent=1),
                f"{schema}.label-studio.xml": config}

    @staticmethod
    def _task(item: ReviewItem) -> dict[str, Any]:
        task: dict[str, Any] = {"data": {FIELD: item.text, "item_id": item.item_id},
                                "meta": {"schema": item.schema, "votes": item.votes}}
        if item.answer:
            answer = item.answer
            task["meta"].update(crowd_label=answer["label"], confidence=answer["confidence"],
                                distribution=answer["distribution"], aggregator=answer["aggregator"])
            task["predictions"] = [{
                "model_version": f"crowd-gateway {answer['aggregator']} v{answer['params_version']}",
                "score": answer["confidence"],
                "result": [{"id": "crowd", "from_name": QUESTION, "to_name": FIELD, "type": "choices",
                            "value": {"choices": [answer["label"]]}}]}]
        return task

    def human_labels(self, path: Path) -> list[HumanLabel]:
        tasks = _read(path, list[_Task], "a Label Studio JSON export of the project `review export` made")
        return [HumanLabel(task.data.item_id, result.choice, annotation.annotator)
                for task in tasks for annotation in task.annotations if not annotation.was_cancelled
                for result in annotation.result if result.choice is not None]


def _metadata_name(prefix: str, name: str) -> str:
    """Argilla's metadata names are lower-case letters, digits, `_` and `-`."""
    return prefix + re.sub(r"[^a-z0-9_-]", "_", name.lower())


class Argilla:
    def export(self, schema: str, items: list[ReviewItem]) -> dict[str, str]:
        labels = items[0].labels
        members = sorted({member for item in items for member in item.votes})
        metadata = [self._property("crowd_label", {"type": "terms", "values": labels}),
                    self._property("confidence", {"type": "float", "min": 0.0, "max": 1.0}),
                    *(self._property(_metadata_name("p_", label), {"type": "float", "min": 0.0, "max": 1.0})
                      for label in labels),
                    *(self._property(_metadata_name("vote_", member), {"type": "terms", "values": labels})
                      for member in members)]
        settings = {
            "guidelines": "Label each text. The crowd's answer is suggested with its confidence; its distribution "
                          "(p_*) and each member's vote (vote_*) are metadata.",
            "fields": [{"name": FIELD, "title": "Text", "required": True, "description": None,
                        "settings": {"type": "text", "use_markdown": False}, "type": "text"}],
            "questions": [{"name": QUESTION, "title": "Label", "description": None, "required": True,
                           "settings": {"type": "label_selection", "visible_options": None,
                                        "options": [{"text": label, "value": label} for label in labels]},
                           "type": "label_selection"}],
            "vectors": [], "metadata": metadata, "allow_extra_metadata": False,
            "distribution": {"strategy": "overlap", "min_submitted": 1}, "mapping": None}
        dataset = {"name": schema, "status": "draft", "guidelines": settings["guidelines"],
                   "allow_extra_metadata": False}
        base = f"{schema}.argilla"
        return {f"{base}/.argilla/dataset.json": json.dumps(dataset),
                f"{base}/.argilla/settings.json": json.dumps(settings, indent=1),
                f"{base}/records.json": json.dumps([self._record(item) for item in items], indent=1)}

    @staticmethod
    def _property(name: str, settings: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "title": name, "visible_for_annotators": True,
                "settings": {**settings, "visible_for_annotators": True}}

    @staticmethod
    def _record(item: ReviewItem) -> dict[str, Any]:
        metadata: dict[str, Any] = {_metadata_name("vote_", member): label for member, label in item.votes.items()}
        suggestions = {}
        if item.answer:
            answer = item.answer
            metadata.update({_metadata_name("p_", label): p for label, p in answer["distribution"].items()},
                            crowd_label=answer["label"], confidence=answer["confidence"])
            suggestions[QUESTION] = {"value": answer["label"], "score": answer["confidence"],
                                     "agent": f"crowd-gateway {answer['aggregator']} v{answer['params_version']}"}
        return {"id": item.item_id, "fields": {FIELD: item.text}, "metadata": metadata,
                "suggestions": suggestions, "responses": {}, "vectors": {}, "status": "pending", "_server_id": None}

    def human_labels(self, path: Path) -> list[HumanLabel]:
        records = _read(path / "records.json" if path.is_dir() else path, list[_Record], "Argilla's records.json")
        return [HumanLabel(record.id, response.value, f"argilla:{response.user_id}") for record in records
                for response in record.responses.get(QUESTION, [])
                if response.status == "submitted" and isinstance(response.value, str)]


FORMATS: dict[str, Format] = {"label-studio": LabelStudio(), "argilla": Argilla()}
