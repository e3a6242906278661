"""The bundled evaluation files stay disjoint from each other and from the few-shot examples."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SPLITS = {"sample": 200, "heldout": 40, "dev": 40}


def load(name: str) -> list[dict]:
    text = (ROOT / "gateway" / "data" / f"sentiment_{name}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


def test_sizes_and_label_balance() -> None:
    for name, size in SPLITS.items():
        rows = load(name)
        assert len(rows) == size
        assert Counter(r["label"] for r in rows) == {"positive": size // 2, "negative": size // 2}
        assert {r["id"].split("-")[0] for r in rows} == {"imdb", "yelp", "amazon"}


def test_splits_are_disjoint_by_id_and_text() -> None:
    ids, texts = Counter(), Counter()
    for name in SPLITS:
        for row in load(name):
            ids[row["id"]] += 1
            texts[norm(row["text"])] += 1
    assert max(ids.values()) == 1 and max(texts.values()) == 1


def test_few_shot_examples_are_never_evaluation_items() -> None:
    config = load_config(ROOT / "deploy" / "local-pool.yaml")
    templates = [m.template for m in config.members if m.template] + list(config.tasks)
    examples = {norm(ex.text) for t in templates for ex in t.examples}
    assert examples
    evaluated = {norm(r["text"]) for name in SPLITS for r in load(name)}
    assert not examples & evaluated
