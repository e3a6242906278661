"""`crowd-gateway review export|import` against a gateway process, checked with the tools' own SDKs.

Items are labelled through the official client; those the crowd is unsure of are queued for review. The export
must be what Label Studio and Argilla import: label-studio-sdk's LabelInterface validates the labelling config and
every pre-annotation, and argilla's own classes read the dataset directory (`rg.Dataset.from_disk`'s files). People's
labels are then written as each tool exports them (label-studio-sdk's Annotation model; argilla's Response objects
saved by its JSON writer) and imported: the gateway stores them as human votes and resolves the queue."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import argilla as rg
import httpx
import pytest
from argilla._models import DatasetModel
from argilla.records._io._json import JsonIO
from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.types import Annotation, PredictionRequest
from openai import OpenAI

from gateway.cli import main
from tests.harness import Upstream

LABELS = ["negative", "positive"]
TRUTH = {f"r-{i} ": LABELS[i % 2] for i in range(6)}


def script_upstream(upstream: Upstream) -> None:
    """m1 is right, m2 always says positive, m3 is right on the first four: the crowd splits 2-1 on most items."""
    upstream.script("m1", keywords=TRUTH)
    upstream.script("m2", answer="positive")
    upstream.script("m3", keywords={t: (g if i < 4 else LABELS[1 - i % 2]) for i, (t, g) in enumerate(TRUTH.items())})


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {"members": [{"name": n, "base_url": upstream.base_url(n), "model": n} for n in ("m1", "m2", "m3")],
            "ensembles": [{"name": "crowd", "members": ["m1", "m2", "m3"], "aggregator": "majority",
                           "review": {"below": 0.9}}]}


def label_all(client: OpenAI) -> dict[str, dict[str, Any]]:
    """Each item's annotation block, by item id; the flagged ones are queued."""
    answers = {}
    for text in TRUTH:
        r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": text}],
                                           extra_body={"labels": LABELS, "item_id": text.strip()})
        answers[text.strip()] = r.model_extra["annotation"]
    return answers


def stored(client: OpenAI, item: str) -> dict[str, Any]:
    """The item as the export reads it: its votes (people's included) and its answer under the latest parameters."""
    return client.get(f"/annotations/{item}", cast_to=object)


def cli(gateway: Any, *args: str) -> int:
    return main(["review", *args[:1], "--gateway", gateway.url, *args[1:]])


def queued(client: OpenAI) -> int:
    return client.get("/review", cast_to=object)["total"]


@pytest.fixture
def offline_argilla() -> rg.Argilla:
    """An argilla client whose one call at construction (who am I) is answered in-process: any other call, which
    would need an Argilla server, fails the test."""
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/me", f"unexpected call to Argilla: {request.method} {request.url}"
        return httpx.Response(200, json={"id": str(uuid.uuid4()), "username": "test", "role": "owner",
                                         "first_name": "test", "inserted_at": "2026-01-01T00:00:00",
                                         "updated_at": "2026-01-01T00:00:00"})

    return rg.Argilla(api_url="http://argilla.invalid", api_key="offline", mounts={"all://": httpx.MockTransport(answer)})


def test_label_studio_round_trip(client: OpenAI, gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = label_all(client)
    flagged = {item for item, a in answers.items() if a["needs_review"]}
    assert len(flagged) >= 3 and queued(client) == len(flagged)
    assert cli(gateway, "export", "--format", "label-studio", "--out", str(tmp_path)) == 0
    (tasks_file,) = tmp_path.glob("*.label-studio.json")
    config = LabelInterface(tasks_file.with_suffix(".xml").read_text())
    assert sorted(config.get_control("label").labels) == LABELS
    tasks = json.loads(tasks_file.read_text())
    assert {t["data"]["item_id"] for t in tasks} == flagged
    for task in tasks:
        item = stored(client, task["data"]["item_id"])
        answer = item["aggregate"]
        config.load_task(task)  # every object's $value is in the task's data
        (prediction,) = task["predictions"]
        assert config.validate_prediction(prediction, return_errors=True) == []
        PredictionRequest.model_validate({**prediction, "task": 1})
        assert prediction["result"][0]["value"]["choices"] == [answer["label"]]
        assert prediction["score"] == answer["confidence"]
        assert task["meta"]["distribution"] == answer["distribution"]
        assert task["meta"]["votes"] == {v["member"]: v["label"] for v in item["votes"]}

    # People label the tasks in Label Studio (user 7 every one, user 9 cancels one), and its JSON export comes back.
    for number, task in enumerate(tasks, start=1):
        truth = TRUTH[task["data"]["item_id"] + " "]
        done = {"id": number, "completed_by": 7, "was_cancelled": False, "task": number,
                "result": [{"id": f"r{number}", "from_name": "label", "to_name": "text", "type": "choices",
                            "origin": "manual", "value": {"choices": [truth]}}]}
        cancelled = {"id": 100 + number, "completed_by": 9, "was_cancelled": True, "task": number, "result": []}
        for annotation in (done, cancelled):
            assert config.validate_annotation(Annotation.model_validate(annotation).model_dump(exclude_none=True))
        task.update(id=number, annotations=[done, cancelled])
    exported = tmp_path / "project-1-export.json"
    exported.write_text(json.dumps(tasks))
    capsys.readouterr()
    assert cli(gateway, "import", "--format", "label-studio", str(exported)) == 0
    assert f"posted {len(tasks)} human labels by 1 annotators" in capsys.readouterr().out
    assert queued(client) == 0
    for item in flagged:
        people = [v for v in stored(client, item)["votes"] if v["member"].startswith("human:")]
        assert people == [{"member": "human:label-studio:7", "label": TRUTH[item + " "], "raw": TRUTH[item + " "]}]


def test_argilla_round_trip(client: OpenAI, gateway: Any, tmp_path: Path, offline_argilla: rg.Argilla) -> None:
    label_all(client)
    assert cli(gateway, "export", "--format", "argilla", "--strategy", "uncertain", "--limit", "4",
               "--out", str(tmp_path)) == 0
    (dataset_dir,) = tmp_path.glob("*.argilla")
    settings = rg.Settings.from_json(dataset_dir / ".argilla" / "settings.json")
    model = DatasetModel(**json.loads((dataset_dir / ".argilla" / "dataset.json").read_text()))
    dataset = rg.Dataset(name=model.name, settings=settings, client=offline_argilla)
    assert settings.questions["label"].labels == LABELS
    metadata = {m.name for m in settings.metadata}
    records = [rg.Record.from_dict(r, dataset=dataset) for r in json.loads((dataset_dir / "records.json").read_text())]
    assert len(records) == 4
    for record in records:
        item = stored(client, record.id)
        answer = item["aggregate"]
        suggestion = record.suggestions["label"]
        assert suggestion.value == answer["label"] and suggestion.score == answer["confidence"]
        shown = record.metadata.to_dict()
        assert set(shown) <= metadata and shown["p_positive"] == answer["distribution"]["positive"]
        assert {m: shown[f"vote_{m}"] for m in ("m1", "m2", "m3")} == {
            v["member"]: v["label"] for v in item["votes"] if not v["member"].startswith("human:")}
        record.api_model()  # what `dataset.records.log` would send

    # Two people answer in Argilla, and the records are saved with Argilla's JSON writer.
    people = [uuid.uuid4(), uuid.uuid4()]
    for number, record in enumerate(records):
        record.responses.add(rg.Response("label", TRUTH[record.id + " "], user_id=people[number % 2],
                                         status="submitted"))
    saved = JsonIO.to_json(records, tmp_path / "records.json")
    assert cli(gateway, "import", "--format", "argilla", str(saved)) == 0
    for number, record in enumerate(records):
        assert f"human:argilla:{people[number % 2]}" in {v["member"] for v in stored(client, record.id)["votes"]}


def test_bad_exports_and_an_unreachable_gateway_are_one_line_errors(
        gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_list = tmp_path / "export.json"
    not_a_list.write_text('{"tasks": []}')
    assert cli(gateway, "import", "--format", "label-studio", str(not_a_list)) == 2
    assert "export.json is not a Label Studio JSON export of the project `review export` made" in (
        capsys.readouterr().err)
    no_id = tmp_path / "no-id.json"
    no_id.write_text(json.dumps([{"data": {"text": "hello"}, "annotations": [{"result": "oops"}]}]))
    assert cli(gateway, "import", "--format", "label-studio", str(no_id)) == 2
    assert "no-id.json is not a Label Studio JSON export of the project `review export` made: 0.data.item_id: " \
           "Field required" in capsys.readouterr().err
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"data": {"item_id": "nobody-asked"}, "annotations": [
        {"completed_by": 1, "result": [{"from_name": "label", "type": "choices", "value": {"choices": ["positive"]}}]}]}]))
    assert cli(gateway, "import", "--format", "label-studio", str(unknown)) == 2
    assert "the gateway answered 404: item 'nobody-asked' has no stored votes" in capsys.readouterr().err
    draft = tmp_path / "records.json"
    draft.write_text(json.dumps([{"id": "r-0", "responses": {"label": [
        {"value": "positive", "user_id": str(uuid.uuid4()), "status": "draft"}]}}]))
    assert cli(gateway, "import", "--format", "argilla", str(draft)) == 0
    assert "no submitted labels: nothing posted" in capsys.readouterr().out
    assert main(["review", "export", "--format", "argilla", "--gateway", "http://127.0.0.1:9", "--timeout", "2",
                 "--out", str(tmp_path)]) == 2
    assert "review queue: cannot reach the gateway" in capsys.readouterr().err
