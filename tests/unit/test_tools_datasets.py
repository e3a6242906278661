"""The tools' one row loader: the same rows from CSV, JSONL and JSONL.gz, the split by id, one-line errors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from gateway.tools import UsageError
from gateway.tools.datasets import load_dataset, read_rows, row_ids, split_of

ROWS = [{"id": f"r{i}", "text": f"text {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows) + "\n"  # a blank last line is skipped
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt") as fh:
            fh.write(text)
    return path


@pytest.mark.parametrize("name", ["data.csv", "data.jsonl", "data.jsonl.gz"])
def test_every_format_gives_the_same_rows(tmp_path: Path, name: str) -> None:
    assert read_rows(write(tmp_path / name, ROWS)) == ROWS


def test_split_by_id_is_stable_disjoint_and_covers_the_data(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", ROWS)
    dev, test = load_dataset(path, "dev"), load_dataset(path, "test")
    assert sorted(r["id"] for r in dev + test) == sorted(r["id"] for r in ROWS)
    assert all(split_of(r["id"]) == "dev" for r in dev) and dev and test
    assert load_dataset(path, "dev", limit=3) == dev[:3]


@pytest.mark.parametrize("content, name, needle", [
    ('{"id": 1, "text": "a", "label": "x"}\n{"id": 2,\n', "bad.jsonl", "bad.jsonl:2: not valid JSONL"),
    ('["not", "an", "object"]\n', "list.jsonl", "list.jsonl:1: expected a JSON object"),
    ("id,text\n1,a\n", "data.txt", "expected a .csv, .jsonl or .jsonl.gz file"),
    ("not gzip", "fake.jsonl.gz", "cannot read"),
])
def test_unreadable_input_is_a_usage_error(tmp_path: Path, content: str, name: str, needle: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(UsageError, match=needle.replace(".", r"\.")):
        read_rows(tmp_path / name)


def test_labelled_rows_need_text_and_label_and_an_id_to_split(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", [{"id": "1", "text": "a"}])
    with pytest.raises(UsageError, match="row 1 has no 'label'"):
        load_dataset(path)
    unnamed = write(tmp_path / "noid.jsonl", [{"text": "a", "label": "x"}])
    assert load_dataset(unnamed) == [{"text": "a", "label": "x"}]
    with pytest.raises(UsageError, match="row 1 has no 'id'"):
        load_dataset(unnamed, "dev")


def test_row_ids_fall_back_to_row_numbers_and_must_be_unique() -> None:
    assert row_ids([{"text": "a"}, {"text": "b"}]) == ["1", "2"]
    assert row_ids([{"doc": 7}], "doc") == ["7"]
    with pytest.raises(UsageError, match=r"duplicate ids \['1'\]"):
        row_ids([{"id": 1}, {"id": "1"}])
