"""The real local pool part of bench/quality.py (prints figures; not a test).

On UCI sentiment sentences split by a hash of the id (prompts were tuned elsewhere): label the
test half with the crowd (uncalibrated), post gold labels for the dev half, refit (Dawid-Skene
plus an isotonic calibration map), and re-read the test items' aggregates under the new
parameters: per-member against crowd accuracy, ECE before and after calibration. Then an
escalation ensemble (the three weaker workers, escalating to the strongest below a threshold)
against sending every item to the strongest worker: accuracy and cost.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import httpx
import yaml

from gateway.config import parse_config
from gateway.tools.datasets import load_dataset, split_of
from gateway.tools.embedded import embedded_gateway
from gateway.tools.evaluate import annotate_items, summarize
from gateway.tools.pool import running_pool

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
LABELS = ["negative", "positive"]


def sentences(split: str, n: int) -> list[dict]:
    rows = [r for name in ("imdb", "yelp", "amazon")
            for r in load_dataset(DATASETS / f"uci_sentiment_{name}.jsonl", split)]
    rows.sort(key=lambda r: split_of(r["id"] + "order"))
    return rows[:n]


def real_pool(n: int = 80) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "local-pool.yaml").read_text())
    names = [mm["name"] for mm in config["members"]]
    config["refit"] = {"every_items": 10**6, "every_s": 10**6, "min_items": 20, "min_gold_for_calibration": 20}
    config["ensembles"] = [{"name": "crowd", "members": names, "aggregator": "dawid_skene", "quorum": 3,
                            "deadline_s": 120}]
    dev, test = sentences("dev", n), sentences("test", n)
    with tempfile.TemporaryDirectory() as tmp, running_pool(parse_config(config)):
        path = Path(tmp) / "pool.yaml"
        path.write_text(yaml.safe_dump(config))
        with embedded_gateway(str(path)) as url:
            before = asyncio.run(annotate_items(url, "bench", "crowd", test, LABELS, 4, desc="test half"))
            dev_records = asyncio.run(annotate_items(url, "bench", "crowd", dev, LABELS, 4, desc="dev half"))
            for row in dev:
                httpx.post(f"{url}/annotations/feedback", json={"item_id": row["id"], "label": row["label"],
                                                                "source": "gold"}).raise_for_status()
            httpx.post(f"{url}/annotations/refit", timeout=600).raise_for_status()
            after = []
            for rec in before:
                stored = httpx.get(f"{url}/annotations/{rec['id']}").json()
                after.append({**rec, "annotation": {**rec["annotation"], **stored["aggregate"]}})
        report_calibration(summarize(before, LABELS), summarize(after, LABELS), n)
        strong = max(summarize(dev_records, LABELS)["members"].items(), key=lambda kv: kv[1]["accuracy"])[0]
        escalation(config, strong, names, test, Path(tmp))


def report_calibration(before: dict, after: dict, n: int) -> None:
    print(f"\nReal local pool, {n} test sentences (UCI sentiment, test half by id hash):")
    print("| worker | accuracy |\n|---|---|")
    for name, d in sorted(before["members"].items(), key=lambda kv: -kv[1]["accuracy"]):
        print(f"| {name} | {d['accuracy']:.3f} |")
    print(f"| crowd, Dawid-Skene before refit | {before['accuracy']:.3f} |")
    print(f"| crowd, Dawid-Skene after refit with {n} dev gold labels | {after['accuracy']:.3f} |")
    print(f"\nECE before calibration {before['ece']:.3f} (mean confidence {before['mean_confidence']:.3f}), "
          f"after {after['ece']:.3f} (mean confidence {after['mean_confidence']:.3f}); Brier {before['brier']:.3f} "
          f"-> {after['brier']:.3f}")


def escalation(config: dict, strong: str, names: list[str], test: list[dict], tmp: Path) -> None:
    weak = [name for name in names if name != strong]
    config = {**config, "ensembles": [
        {"name": "escalating", "members": weak, "aggregator": "majority", "quorum": 2, "deadline_s": 120,
         "escalation": {"below": 0.99, "to": strong}},
        {"name": "strong-only", "members": [strong], "aggregator": "majority", "quorum": 1, "deadline_s": 120}]}
    path = tmp / "escalation.yaml"
    path.write_text(yaml.safe_dump(config))
    with embedded_gateway(str(path)) as url:
        esc = summarize(asyncio.run(annotate_items(url, "bench", "escalating", test, LABELS, 4, desc="escalating")),
                        LABELS)
        alone = summarize(asyncio.run(annotate_items(url, "bench", "strong-only", test, LABELS, 4,
                                                     desc="strong only")), LABELS)
    strong_cost = alone["cost_per_1000"]
    esc_strong = esc["members"].get(strong, {"cost_per_1000": 0.0, "answered": 0})
    print(f"\nEscalation to the strongest worker ({strong}) only when the 3 others do not agree unanimously:")
    print("| setup | accuracy | escalated | strong-worker calls per item | USD per 1,000 labels |\n|---|---|---|---|---|")
    print(f"| {strong} on every item | {alone['accuracy']:.3f} | - | 1.00 | {strong_cost:.6f} |")
    print(f"| 3 workers + escalation | {esc['accuracy']:.3f} | {esc['escalation_rate']:.1%} | "
          f"{esc_strong['answered'] / len(test):.2f} | {esc['cost_per_1000']:.6f} |")
    print(f"strong-worker calls saved: {1 - esc_strong['answered'] / len(test):.1%}")
    print(json.dumps({"escalating": {k: esc[k] for k in ("accuracy", "escalation_rate", "cost_per_1000")},
                      "strong_only": {k: alone[k] for k in ("accuracy", "cost_per_1000")}}))


if __name__ == "__main__":
    real_pool()
