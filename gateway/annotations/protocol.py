"""The wire schemas of the annotation routes: the feedback body (one label or many), and the answers.

Why typed answers: each route's body is the shape clients read (the OpenAI-style `object` names), declared here
once; orjson writes the dataclasses natively, so they cost the handlers what the dicts did.
"""

from __future__ import annotations

from typing import Literal

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
