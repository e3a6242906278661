"""Write the bundled sentiment evaluation files from the shared UCI sentences, reproducibly.

Why seeded hashing of ids: the split is stable across runs and machines and does not depend on file
order, so a prompt tuned on the dev slice is never scored on the items it was tuned on. Few-shot
example texts of the given config are excluded from every split (they are training data).
Usage: python deploy/sentiment_splits.py [--config deploy/local-pool.yaml] [--datasets DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from gateway.config import load_config

SEED = "crowd-gateway-sentiment-v1"
SOURCES = ("imdb", "yelp", "amazon")
LABELS = ("positive", "negative")
# items per (source, label): sample 200, held-out 40 (real-model tests), dev 40 (template tuning)
SPLITS = {
    "sample": {"imdb": 34, "yelp": 33, "amazon": 33},
    "heldout": {"imdb": 7, "yelp": 7, "amazon": 6},
    "dev": {"imdb": 7, "yelp": 7, "amazon": 6},
}
DATA_DIR = Path(__file__).resolve().parent.parent / "gateway" / "data"


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def rank(item_id: str) -> str:
    return hashlib.sha256(f"{SEED}:{item_id}".encode()).hexdigest()


def example_texts(config_path: Path) -> set[str]:
    config = load_config(config_path)
    templates = [m.template for m in config.members if m.template] + list(config.tasks)
    return {normalise(ex.text) for t in templates for ex in t.examples}


def load_items(datasets: Path) -> list[dict]:
    items = []
    for source in SOURCES:
        with open(datasets / f"uci_sentiment_{source}.jsonl") as fh:
            items += [json.loads(line) | {"source": source} for line in fh]
    return items


def split(items: list[dict], excluded: set[str]) -> dict[str, list[dict]]:
    """Walk items in hash order and fill each split's (source, label) quota, split after split.

    Texts that occur more than once anywhere are skipped, so no sentence straddles two splits.
    """
    counts: dict[str, int] = {}
    for item in items:
        counts[normalise(item["text"])] = counts.get(normalise(item["text"]), 0) + 1
    pool = [i for i in sorted(items, key=lambda i: rank(i["id"]))
            if counts[normalise(i["text"])] == 1 and normalise(i["text"]) not in excluded]
    out: dict[str, list[dict]] = {}
    for name, quota in SPLITS.items():
        need = {(s, lab): quota[s] for s in SOURCES for lab in LABELS}
        chosen = []
        for item in pool:
            key = (item["source"], item["label"])
            if need.get(key, 0) > 0:
                need[key] -= 1
                chosen.append(item)
        taken = {id(i) for i in chosen}
        pool = [i for i in pool if id(i) not in taken]
        out[name] = [{"id": i["id"], "text": i["text"], "label": i["label"]} for i in chosen]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--config", type=Path, default=root / "deploy" / "local-pool.yaml")
    parser.add_argument("--datasets", type=Path, default=root.parent / "shared" / "datasets")
    args = parser.parse_args()
    splits = split(load_items(args.datasets), example_texts(args.config))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        path = DATA_DIR / f"sentiment_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} items")


if __name__ == "__main__":
    main()
