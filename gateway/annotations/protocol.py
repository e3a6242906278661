"""The wire schemas of the annotation routes: the feedback body (one label or many), and the answers.

Why typed answers: each route's body is the shape clients read (the OpenAI-style `object` names), declared here
once; orjson writes the dataclasses natively, so they cost the handlers what the dicts did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.task import item_id_problem


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


MAX_BULK = 1000
"""Most feedback lines one request may carry."""


class FeedbackBatch(BaseModel):
    """`POST /v1/annotations/feedback` with many labels at once (checked before any is stored); documents the body,
    which the handler reads line by line to name the bad line."""

    data: list[Feedback] = Field(min_length=1, max_length=MAX_BULK)


@dataclass(kw_only=True)
class FeedbackAnswer:
    """One stored label: its item, the schema it counts for, the label as stored (canonical)."""

    object: str = "annotation.feedback"
    item_id: str
    schema: str
    label: str
    source: str
    resolved_review: bool


@dataclass
class Aggregate:
    """An item's answer under the latest published parameters."""

    label: str
    confidence: float
    distribution: dict[str, float]
    aggregator: str
    params_version: int


@dataclass(kw_only=True)
class StoredAnnotation:
    """`GET /v1/annotations/{item_id}`: the stored item, its gold, its votes (canonical) and its aggregate."""

    object: str = "annotation"
    item_id: str
    schema: str
    labels: list[str]
    text: str
    ensemble: str
    gold: str | None
    votes: list[dict[str, Any]]
    aggregate: Aggregate | None


@dataclass(kw_only=True)
class Refit:
    """`POST /v1/annotations/refit`: the schemas refitted, each (schema, aggregator)'s version, what was skipped."""

    object: str = "refit"
    refitted: list[str]
    versions: dict[str, int]
    skipped: list[dict[str, Any]]
