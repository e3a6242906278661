"""The crowd against its best member, on data it has never seen, with the real local pool (prints figures).

For each data set (two sentiment sets, 3-class tweets, 7 intents from ../shared/datasets): rows whose
text is a few-shot example of the config are dropped; the rest is split by a hash of the id into a
gold half and a test half. The four local workers label gold candidates and test items once, through
the gateway (ensemble `crowd`, every worker asked, the task's own prompt); then, for 0, 20 and 50
gold labels, every aggregator is fitted with the gateway's own refit (ensembles/refit.py: the code
the background refit runs) on all those votes and the gold labels, and scored on the test items with
the gateway's own posterior and calibration. The best member is the best on the TEST items (an oracle:
the strictest comparison). Cost is what the four calls of an item cost, per 1,000 items.

LLM + human: the VADER tweets, each rated by 20-95 people. Every item gets ONE real human label (the
sign of one rater's score, drawn per item), from 40 pseudo-annotators who each label a few items; the
item's truth is the sign of the mean of the OTHER raters, so humans are not graded against themselves.

Run: .venv/bin/python bench/quality_real.py [--test 200] [--sets imdb,amazon,tweets,intents] [--saved]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ensembles import metrics as m
from ensembles.aggregators import get_aggregator, pick
from ensembles.calibration import calibrate
from ensembles.debias import debias
from ensembles.extract import fold
from ensembles.refit import refit
from ensembles.votes import Vote
from gateway.config import Config, load_config
from gateway.tools.datasets import load_dataset, split_of
from gateway.tools.embedded import embedded_gateway
from gateway.tools.evaluate import annotate_items
from gateway.tools.pool import running_pool

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
POOL = ROOT / "deploy" / "local-pool.yaml"
SETS = {"imdb": ("uci_sentiment_imdb.jsonl", "sentiment"), "amazon": ("uci_sentiment_amazon.jsonl", "sentiment"),
        "tweets": ("tweets_sentiment_crowdflower.jsonl", "tweets"), "intents": ("intents_bigbench.jsonl", "intents")}
GOLD_SIZES = (0, 20, 50)
AGGREGATORS = ("majority", "weighted", "dawid_skene", "stacking", "auto")
MIN_GOLD = 20
OUT = ROOT / "out" / "quality"
"""Each set's votes, test truth and gold pool, for re-aggregating offline."""
ItemVotes = dict[str, list[dict[str, Any]]]


def few_shot_texts(config: Config) -> set[str]:
    """Every few-shot example of every task and variant: training data, never evaluated on."""
    texts = set()
    for task in config.tasks:
        for examples in [task.examples, *(v.examples or [] for v in task.variants.values())]:
            texts.update(fold(e.text) for e in examples)
    return texts


def ordered(rows: list[dict[str, Any]], salt: str) -> list[dict[str, Any]]:
    """A stable shuffle by a hash of the id, so a prefix of it is a fair sample of the split."""
    return sorted(rows, key=lambda r: hashlib.blake2b(f"{salt}:{r['id']}".encode(), digest_size=8).digest())


def collect(url: str, rows: Sequence[dict[str, Any]], task: str, labels: Sequence[str]) -> tuple[ItemVotes, float]:
    """Every worker's vote on every row (through the gateway), and the mean cost of an item."""
    records = asyncio.run(annotate_items(url, "bench", "crowd", rows, labels, 16, desc=f"{task} votes", task=task))
    votes = {str(r["id"]): r["annotation"]["votes"] for r in records if r["annotation"]}
    cost = sum(r["cost_usd"] for r in records) / max(len(records), 1)
    return votes, cost


def score(name: str, votes: ItemVotes, labels: Sequence[str], gold: Mapping[str, str],
          test: Mapping[str, str]) -> tuple[float, float]:
    """(accuracy, ECE) of one aggregator on the test items, fitted on every item's votes and `gold`."""
    params = refit(name, votes, labels, gold, MIN_GOLD)
    agg = get_aggregator(name)
    predicted, confidence, correct = [], [], []
    for item, truth in test.items():
        cast = [Vote.from_wire(v, len(labels)) for v in votes.get(item, []) if v.get("label") is not None]
        dist = agg.posterior(cast, labels, params)
        label = labels[pick(dist)]
        predicted.append(label)
        confidence.append(calibrate(params.get("calibration"), max(dist), len(cast)))
        correct.append(label == truth)
    return m.accuracy(predicted, list(test.values())), m.ece(confidence, correct)


def members_alone(votes: ItemVotes, test: Mapping[str, str]) -> dict[str, float]:
    names = sorted({v["member"] for item in test for v in votes.get(item, [])})
    return {n: sum(any(v["member"] == n and v["label"] == truth for v in votes.get(item, []))
                   for item, truth in test.items()) / len(test) for n in names}


def collect_set(url: str, config: Config, name: str, n_test: int) -> None:
    """Every worker's votes on the set's gold pool and test items, saved to OUT for `report_set`."""
    file, task_name = SETS[name]
    task = config.task(task_name)
    assert task is not None
    labels = list(task.labels)
    shots = few_shot_texts(config)
    rows = [r for r in load_dataset(DATASETS / file) if fold(r["text"]) not in shots and r["label"] in labels]
    gold_pool = ordered([r for r in rows if split_of(str(r["id"])) == "dev"], name)[:max(GOLD_SIZES)]
    test_rows = ordered([r for r in rows if split_of(str(r["id"])) == "test"], name)[:n_test]
    votes, cost = collect(url, gold_pool + test_rows, task_name, labels)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({
        "task": task_name, "labels": labels, "votes": votes, "cost": cost,
        "test": {str(r["id"]): r["label"] for r in test_rows}, "gold": [[str(r["id"]), r["label"]] for r in gold_pool]}))


def debiased_alone(votes: ItemVotes, labels: Sequence[str], gold: Mapping[str, str],
                   test: Mapping[str, str]) -> dict[str, float]:
    """Each member alone after the gateway's debiasing (the biases `auto` publishes with this gold): what auto's
    single-member candidates are."""
    params = refit("auto", votes, labels, gold, MIN_GOLD)
    out = {}
    for member in sorted({v["member"] for vs in votes.values() for v in vs}):
        right = 0
        for item, truth in test.items():
            mine = [Vote.from_wire(v, len(labels)) for v in votes.get(item, []) if v["member"] == member and v.get("label")]
            right += bool(mine) and debias(mine, params.get("biases"), labels)[0].label == truth
        out[member] = right / len(test)
    return out


def report_set(name: str) -> None:
    """The set's table from its saved votes: every member alone, every aggregator at 0, 20 and 50 gold."""
    saved = json.loads((OUT / f"{name}.json").read_text())
    labels, votes, test, gold_pool = saved["labels"], saved["votes"], saved["test"], saved["gold"]
    alone = members_alone(votes, test)
    best_name, best = max(alone.items(), key=lambda kv: kv[1])
    debiased = debiased_alone(votes, labels, dict(gold_pool[:max(GOLD_SIZES)]), test)
    best_debiased = max(debiased.items(), key=lambda kv: kv[1])
    results = {g: {a: score(a, votes, labels, dict(gold_pool[:g]), test) for a in AGGREGATORS} for g in GOLD_SIZES}
    print(f"\n### {name} ({saved['task']}, {len(labels)} labels): {len(test)} test items, "
          f"USD {1000 * saved['cost']:.4f} per 1,000 labels\n")
    print("| | " + " | ".join(f"acc, {g} gold" for g in GOLD_SIZES) + " | ECE, 50 gold | vs best member, 50 gold |")
    print("|---|" + "---|" * (len(GOLD_SIZES) + 2))
    for member, acc in sorted(alone.items(), key=lambda kv: -kv[1]):
        print(f"| {member}{' (best member)' if member == best_name else ''} | "
              + " | ".join(f"{acc:.3f}" for _ in GOLD_SIZES) + " | - | - |")
    print(f"| best member debiased by the gateway ({best_debiased[0]}, 50 gold) | - | - | {best_debiased[1]:.3f} | - | "
          f"{100 * (best_debiased[1] - best):+.1f} pts |")
    for a in AGGREGATORS:
        row = results[max(GOLD_SIZES)][a]
        print(f"| {a} | " + " | ".join(f"{results[g][a][0]:.3f}" for g in GOLD_SIZES)
              + f" | {row[1]:.3f} | {100 * (row[0] - best):+.1f} pts |")


def collect_humans(url: str, n_test: int) -> None:
    """One real human label per item (VADER raters) and the LLM votes, saved to OUT for `report_humans`."""
    rows = ordered(load_dataset(DATASETS / "vader_tweets_raters.jsonl"), "vader")[:max(GOLD_SIZES) + n_test]
    truth, human = {}, {}
    for row in rows:
        rng = random.Random(str(row["id"]))
        ratings = [r for r in row["human_ratings"] if r != 0]
        i = rng.randrange(len(ratings))
        others = ratings[:i] + ratings[i + 1:]
        if not others or sum(others) == 0:
            continue
        truth[str(row["id"])] = "positive" if sum(others) > 0 else "negative"
        human[str(row["id"])] = ("human:rater-" + str(rng.randrange(40)), "positive" if ratings[i] > 0 else "negative")
    rows = [r for r in rows if str(r["id"]) in truth]
    labels = ["positive", "negative"]
    votes, _ = collect(url, rows, "sentiment", labels)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vader.json").write_text(json.dumps({
        "labels": labels, "votes": votes, "human": human,
        "gold": [[str(r["id"]), truth[str(r["id"])]] for r in rows[:max(GOLD_SIZES)]],
        "test": {str(r["id"]): truth[str(r["id"])] for r in rows[max(GOLD_SIZES):]}}))


def report_humans() -> None:
    """LLM crowd, humans alone, and both, from the saved votes."""
    saved = json.loads((OUT / "vader.json").read_text())
    labels, votes, human, test = saved["labels"], saved["votes"], saved["human"], saved["test"]
    gold = dict(saved["gold"])
    with_humans = {item: vs + [{"member": human[item][0], "label": human[item][1], "raw": human[item][1]}]
                   for item, vs in votes.items()}
    humans_alone = sum(human[item][1] == t for item, t in test.items()) / len(test)
    llm = members_alone(votes, test)
    print(f"\n### LLM + one human label per item: VADER tweets, {len(test)} test items, {len(gold)} gold "
          f"(truth = the other raters' mean)\n")
    print("| | accuracy | ECE |\n|---|---|---|")
    for member, acc in sorted(llm.items(), key=lambda kv: -kv[1]):
        print(f"| {member} | {acc:.3f} | - |")
    print(f"| humans alone (one label per item, 40 annotators) | {humans_alone:.3f} | - |")
    for a in ("weighted", "dawid_skene", "stacking", "auto"):
        acc, ece = score(a, votes, labels, gold, test)
        both, both_ece = score(a, with_humans, labels, gold, test)
        print(f"| LLM crowd, {a} | {acc:.3f} | {ece:.3f} |")
        print(f"| LLM crowd + humans, {a} | {both:.3f} | {both_ece:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", type=int, default=200, help="test items per data set (default: 200)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"data sets (default: {','.join(SETS)})")
    parser.add_argument("--no-humans", action="store_true", help="skip the LLM + human comparison")
    parser.add_argument("--saved", action="store_true",
                        help=f"re-aggregate the votes the last run saved in {OUT.relative_to(ROOT)} (no pool)")
    args = parser.parse_args()
    sets = args.sets.split(",")
    if not args.saved:
        config = load_config(POOL)
        with running_pool(config), embedded_gateway(str(POOL)) as url:
            for name in sets:
                collect_set(url, config, name, args.test)
            if not args.no_humans:
                collect_humans(url, args.test)
    for name in sets:
        report_set(name)
    if not args.no_humans:
        report_humans()


if __name__ == "__main__":
    main()
