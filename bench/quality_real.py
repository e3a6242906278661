"""The crowd against its best member and the trivial answer, on items it was never tuned on, with the real local
pool (prints figures).

Data sets (../shared/datasets): two sentiment sets (movie and product reviews), 3-class tweets, 7 intents and 5
newswire topics (BBC articles: long texts). Every row is split by a hash of its id (gateway/tools/datasets.py):
prompts, variants and thresholds were tuned on `dev` ids only, and every figure here is on `test` ids. Rows whose
text is a few-shot example of the config are dropped. Gold labels come from dev ids (a pool of the first 150 of a
stable shuffle; each figure at 20 or 50 gold is the mean over 10 random draws from the pool, with the spread of that
mean); the test items are the first `--test` test ids of another.

The six local workers label the gold pool and the test items once, through the gateway (ensemble `crowd`, every
worker asked, the task's own prompt); then, for 0, 20 and 50 gold labels, each aggregator is fitted with the
gateway's own refit (ensembles/refit.py: the code the background refit runs, look-alike groups by model as the
gateway passes them) on all those votes and the gold labels, and scored on the test items with the gateway's own
posterior and calibration. Beside it, on the same test items: every member alone, the best member on the TEST
items (an oracle: the strictest comparison), and the most-frequent-label baseline (the label most frequent among
the gold labels, answered for every item).

LLM + people: the VADER tweets and Amazon snippets, each rated by 20 or more people. Every item gets ONE real
human label (the sign of one rater's score, drawn per item) from 40 pseudo-annotators who each label a few items;
the item's truth is the sign of the mean of the OTHER raters, so people are not graded against themselves.

Run: .venv/bin/python bench/quality_real.py [--test 300] [--sets imdb,amazon,tweets,intents,bbc] [--saved] [--dev]
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
from ensembles.refit import refit
from ensembles.votes import Vote
from gateway.asking.extract import fold
from gateway.config import Config, load_config
from gateway.tools.datasets import load_dataset, split_of
from gateway.tools.embedded import embedded_gateway
from gateway.tools.evaluate import annotate_items
from gateway.tools.pool import running_pool

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
POOL = ROOT / "deploy" / "local-pool.yaml"
SETS = {"imdb": ("uci_sentiment_imdb.jsonl", "sentiment"), "amazon": ("uci_sentiment_amazon.jsonl", "sentiment"),
        "tweets": ("tweets_sentiment_crowdflower.jsonl", "tweets"), "intents": ("intents_bigbench.jsonl", "intents"),
        "bbc": ("bbc_news.jsonl.gz", "topics")}
RATED = {"vader_tweets": "vader_tweets_raters.jsonl", "vader_amazon": "vader_amazon_raters.jsonl"}
GOLD_SIZES = (0, 20, 50)
GOLD_POOL = 150
"""Dev items labelled for gold; each figure at g gold is the mean over DRAWS random g-subsets of them: one draw of
50 gold items moves a crowd's accuracy by several points (measured on dev: 0.89 to 0.94 for one method on one set),
more than the differences a table is read for."""
DRAWS = 10
AGGREGATORS = ("majority", "weighted", "dawid_skene", "grouped_dawid_skene", "stacking", "auto")
MIN_GOLD = 20
OUT = ROOT / "out" / "quality"
"""Each set's votes, test truth and gold pool, for re-aggregating offline (`out/quality-dev` with `--dev`)."""
ItemVotes = dict[str, list[dict[str, Any]]]


def few_shot_texts(config: Config) -> set[str]:
    """Every few-shot example of every task and variant, and its first sentence (an example may be an article's
    headline and lead): training data, never evaluated on."""
    texts = set()
    for task in config.tasks:
        for examples in [task.examples, *(v.examples or [] for v in task.variants.values())]:
            for e in examples:
                texts.update((fold(e.text), fold(e.text.split(". ")[0])))
    return texts


def is_example(text: str, shots: set[str]) -> bool:
    return fold(text) in shots or fold(text.split("\n")[0]) in shots


def ordered(rows: list[dict[str, Any]], salt: str) -> list[dict[str, Any]]:
    """A stable shuffle by a hash of the id, so a prefix of it is a fair sample of the split."""
    return sorted(rows, key=lambda r: hashlib.blake2b(f"{salt}:{r['id']}".encode(), digest_size=8).digest())


def collect(url: str, rows: Sequence[dict[str, Any]], task: str, labels: Sequence[str]) -> tuple[ItemVotes, float]:
    """Every worker's vote on every row (through the gateway), and the mean cost of an item."""
    records = asyncio.run(annotate_items(url, "bench", "crowd", rows, labels, 16, desc=f"{task} votes", task=task))
    votes = {str(r["id"]): r["annotation"]["votes"] for r in records if r["annotation"]}
    cost = sum(r["cost_usd"] for r in records) / max(len(records), 1)
    return votes, cost


def draws(pool: Sequence[Sequence[str]], size: int, salt: str) -> list[dict[str, str]]:
    """DRAWS seeded random subsets of `size` gold items from the pool (one empty set for 0 gold)."""
    if size == 0:
        return [{}]
    return [dict(random.Random(f"{salt}:{size}:{d}").sample([tuple(x) for x in pool], size)) for d in range(DRAWS)]


def mean_score(name: str, votes: ItemVotes, labels: Sequence[str], golds: Sequence[Mapping[str, str]],
               test: Mapping[str, str], groups: Mapping[str, str]) -> tuple[float, float, float, list[float]]:
    """(mean accuracy, twice its standard error over the draws, mean ECE, each test item's share of draws answered
    right) of `score` over the gold draws."""
    runs = [score(name, votes, labels, gold, test, groups) for gold in golds]
    acc = [a for a, _, _ in runs]
    mean = sum(acc) / len(acc)
    spread = 2 * (sum((a - mean) ** 2 for a in acc) / (len(acc) - 1) / len(acc)) ** 0.5 if len(acc) > 1 else 0.0
    hits = [sum(run[2][i] for run in runs) / len(runs) for i in range(len(test))]
    return mean, spread, sum(e for _, e, _ in runs) / len(runs), hits


def paired_gap(hits: Sequence[float], other: Sequence[bool]) -> tuple[float, float]:
    """(mean difference, twice its standard error) between two answerers' per-item correctness on the same test
    items: whether a gap between the crowd and the best member is more than which items happened to be drawn."""
    d = [h - float(o) for h, o in zip(hits, other)]
    mean = sum(d) / len(d)
    return mean, 2 * (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5


def score(name: str, votes: ItemVotes, labels: Sequence[str], gold: Mapping[str, str], test: Mapping[str, str],
          groups: Mapping[str, str]) -> tuple[float, float, list[bool]]:
    """(accuracy, ECE, each test item answered right) of one aggregator on the test items, fitted on every item's
    votes and `gold`."""
    params = refit(name, votes, labels, gold, MIN_GOLD, groups=groups)
    agg = get_aggregator(name)
    predicted, confidence, correct = [], [], []
    for item, truth in test.items():
        cast = [Vote.from_wire(v, len(labels)) for v in votes.get(item, []) if v.get("label") is not None]
        dist = agg.posterior(cast, labels, params)
        label = labels[pick(dist)]
        predicted.append(label)
        confidence.append(calibrate(params.get("calibration"), max(dist), len(cast)))
        correct.append(label == truth)
    return m.accuracy(predicted, list(test.values())), m.ece(confidence, correct), correct


def members_alone(votes: ItemVotes, test: Mapping[str, str]) -> dict[str, float]:
    names = sorted({v["member"] for item in test for v in votes.get(item, []) if not v["member"].startswith("human:")})
    return {n: sum(member_hits(n, votes, test)) / len(test) for n in names}


def member_hits(name: str, votes: ItemVotes, test: Mapping[str, str]) -> list[bool]:
    """Each test item: did member `name` answer it right."""
    return [any(v["member"] == name and v["label"] == truth for v in votes.get(item, [])) for item, truth in test.items()]


def baseline(gold: Mapping[str, str], test: Mapping[str, str], labels: Sequence[str]) -> tuple[str, float]:
    """The most frequent label of the gold pool and its accuracy on the test items (answered for every item)."""
    label = max(labels, key=lambda x: sum(g == x for g in gold.values()))
    return label, sum(t == label for t in test.values()) / len(test)


def evaluated(rows: list[dict[str, Any]], salt: str, n: int, dev: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(gold pool, evaluated items) of `rows`: the gold pool is the first GOLD_POOL dev ids of a stable shuffle;
    the evaluated items are the first `n` test ids, or with `dev` the next `n` dev ids (for tuning: the test ids
    stay unseen)."""
    dev_rows = ordered([r for r in rows if split_of(str(r["id"])) == "dev"], salt)
    rest = dev_rows[GOLD_POOL:] if dev else ordered([r for r in rows if split_of(str(r["id"])) == "test"], salt)
    return dev_rows[:GOLD_POOL], rest[:n]


def collect_set(url: str, config: Config, name: str, n_test: int, dev: bool, out: Path) -> None:
    """Every worker's votes on the set's gold pool and test items, saved to `out` for `report_set`."""
    file, task_name = SETS[name]
    task = config.task(task_name)
    assert task is not None
    labels = list(task.labels)
    shots = few_shot_texts(config)
    rows = [r for r in load_dataset(DATASETS / file) if not is_example(r["text"], shots) and r["label"] in labels]
    gold_pool, test_rows = evaluated(rows, name, n_test, dev)
    votes, cost = collect(url, gold_pool + test_rows, task_name, labels)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({
        "task": task_name, "labels": labels, "votes": votes, "cost": cost,
        "test": {str(r["id"]): r["label"] for r in test_rows}, "gold": [[str(r["id"]), r["label"]] for r in gold_pool]}))


def report_set(name: str, groups: Mapping[str, str], out: Path) -> dict[str, Any]:
    """The set's table from its saved votes; returns its headline figures for the summary."""
    saved = json.loads((out / f"{name}.json").read_text())
    labels, votes, test, gold_pool = saved["labels"], saved["votes"], saved["test"], saved["gold"]
    alone = members_alone(votes, test)
    best_name, best = max(alone.items(), key=lambda kv: kv[1])
    trivial_label, trivial = baseline(dict(gold_pool), test, labels)
    results = {g: {a: mean_score(a, votes, labels, draws(gold_pool, g, name), test, groups) for a in AGGREGATORS}
               for g in GOLD_SIZES}
    print(f"\n### {name} ({saved['task']}, {len(labels)} labels): {len(test)} test items, "
          f"USD {1000 * saved['cost']:.4f} per 1,000 labels\n")
    print("| | " + " | ".join(f"acc, {g} gold" for g in GOLD_SIZES) + " | ECE, 50 gold | vs best member, 50 gold |")
    print("|---|" + "---|" * (len(GOLD_SIZES) + 2))
    print(f"| always '{trivial_label}' (most frequent gold label) | " + " | ".join(f"{trivial:.3f}" for _ in GOLD_SIZES)
          + f" | - | {100 * (trivial - best):+.1f} pts |")
    for member, acc in sorted(alone.items(), key=lambda kv: -kv[1]):
        print(f"| {member}{' (best member)' if member == best_name else ''} | "
              + " | ".join(f"{acc:.3f}" for _ in GOLD_SIZES) + " | - | - |")
    for a in AGGREGATORS:
        row = results[max(GOLD_SIZES)][a]
        cells = [f"{r[0]:.3f}" + (f" ± {r[1]:.3f}" if r[1] else "") for r in (results[g][a] for g in GOLD_SIZES)]
        print(f"| {'**crowd: auto**' if a == 'auto' else a} | " + " | ".join(cells)
              + f" | {row[2]:.3f} | {100 * (row[0] - best):+.1f} pts |")
    crowd, spread, ece, hits = results[max(GOLD_SIZES)]["auto"]
    gap, gap_spread = paired_gap(hits, member_hits(best_name, votes, test))
    return {"set": name, "labels": len(labels), "test": len(test), "best": best, "best_name": best_name,
            "trivial": trivial, "crowd": crowd, "spread": spread, "ece": ece, "gap_spread": gap_spread}


def collect_people(url: str, name: str, n_test: int, dev: bool, out: Path) -> None:
    """One real human label per test item (VADER raters) and the LLM votes, saved to `out` for `report_people`."""
    gold_rows, test_rows = evaluated(load_dataset(DATASETS / RATED[name]), name, n_test, dev)
    truth, human = {}, {}
    for row in gold_rows + test_rows:
        rng = random.Random(str(row["id"]))
        ratings = [r for r in row["human_ratings"] if r != 0]
        i = rng.randrange(len(ratings))
        others = ratings[:i] + ratings[i + 1:]
        if not others or sum(others) == 0:
            continue
        truth[str(row["id"])] = "positive" if sum(others) > 0 else "negative"
        human[str(row["id"])] = ("human:rater-" + str(rng.randrange(40)), "positive" if ratings[i] > 0 else "negative",
                                 ratings[i])  # the score itself (-4..4), kept for analysis only
    rows = [r for r in gold_rows + test_rows if str(r["id"]) in truth]
    labels = ["positive", "negative"]
    votes, _ = collect(url, rows, "sentiment", labels)
    out.mkdir(parents=True, exist_ok=True)
    gold_ids = {str(r["id"]) for r in gold_rows}
    (out / f"{name}.json").write_text(json.dumps({
        "labels": labels, "votes": votes, "human": human,
        "gold": [[i, truth[i]] for i in truth if i in gold_ids],
        "test": {i: t for i, t in truth.items() if i not in gold_ids}}))


def report_people(name: str, groups: Mapping[str, str], out: Path) -> dict[str, Any]:
    """LLM crowd, people alone, and both, from the saved votes (one person's label on every item, gold included)."""
    saved = json.loads((out / f"{name}.json").read_text())
    labels, votes, human, test = saved["labels"], saved["votes"], saved["human"], saved["test"]
    gold = dict(saved["gold"])
    with_people = {item: vs + [{"member": human[item][0], "label": human[item][1], "raw": human[item][1]}]
                   for item, vs in votes.items()}
    people = sum(human[item][1] == t for item, t in test.items()) / len(test)
    llm = members_alone(votes, test)
    print(f"\n### LLM + one human label per item: {name}, {len(test)} test items, {max(GOLD_SIZES)} gold (mean of "
          f"{DRAWS} draws from {len(gold)}; truth = the other raters' mean)\n")
    print("| | accuracy | ECE |\n|---|---|---|")
    for member, acc in sorted(llm.items(), key=lambda kv: -kv[1]):
        print(f"| {member} | {acc:.3f} | - |")
    print(f"| people alone (one label per item, 40 annotators) | {people:.3f} | - |")
    out = {"set": name, "people": people, "best": max(llm.values())}
    golds = draws(saved["gold"], max(GOLD_SIZES), name)
    for a in ("stacking", "auto"):
        acc, spread, ece, _ = mean_score(a, votes, labels, golds, test, groups)
        both, both_spread, both_ece, _ = mean_score(a, with_people, labels, golds, test, groups)
        print(f"| LLM crowd, {a} | {acc:.3f} ± {spread:.3f} | {ece:.3f} |")
        print(f"| LLM crowd + people, {a} | {both:.3f} ± {both_spread:.3f} | {both_ece:.3f} |")
        if a == "auto":
            out.update(crowd=acc, both=both, spread=both_spread)
    disagree, crowd_right, gain = overrides(votes, human, labels, golds, test, groups)
    print(f"\nWhere the LLM crowd (auto) and the person disagree: {disagree:.1f} items, the crowd right on "
          f"{crowd_right:.1f}; overruling the person wherever the crowd is surer than a threshold gains at most "
          f"{gain:.1f} items, with the threshold chosen on these test items in hindsight (mean of {len(golds)} draws)")
    return out


def overrides(votes: ItemVotes, human: Mapping[str, list[Any]], labels: Sequence[str],
              golds: Sequence[Mapping[str, str]], test: Mapping[str, str],
              groups: Mapping[str, str]) -> tuple[float, float, float]:
    """(items where the LLM crowd and the person disagree, those the crowd has right, the most any confidence
    threshold for overruling the person could gain), each the mean over the gold draws: the ceiling of what LLM votes
    can add to one person's label, since no rule fitted on the gold can beat a threshold picked on the answers."""
    agg = get_aggregator("auto")
    found = []
    for gold in golds:
        params = refit("auto", votes, labels, gold, MIN_GOLD, groups=groups)
        disagreements = []
        for item, truth in test.items():
            cast = [Vote.from_wire(v, len(labels)) for v in votes.get(item, []) if v.get("label") is not None]
            dist = agg.posterior(cast, labels, params)
            if labels[pick(dist)] != human[item][1]:
                disagreements.append((max(dist), labels[pick(dist)] == truth))
        running = best = 0
        for _, crowd_right in sorted(disagreements, reverse=True):  # overrule the surest first
            running += 1 if crowd_right else -1
            best = max(best, running)
        found.append((len(disagreements), sum(right for _, right in disagreements), best))
    return tuple(sum(f[k] for f in found) / len(found) for k in range(3))  # type: ignore[return-value]


def summary(sets: Sequence[dict[str, Any]], rated: Sequence[dict[str, Any]]) -> None:
    print(f"\n### Summary, 50 gold (mean of {DRAWS} draws ± twice its standard error), test ids\n")
    print("| set | labels | test items | most frequent label | best member | crowd (auto) | crowd - best (± 2 SE, "
          "paired over the test items) | ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sets:
        print(f"| {s['set']} | {s['labels']} | {s['test']} | {s['trivial']:.3f} | {s['best']:.3f} ({s['best_name']}) | "
              f"**{s['crowd']:.3f}** ± {s['spread']:.3f} | {100 * (s['crowd'] - s['best']):+.1f} ± "
              f"{100 * s['gap_spread']:.1f} pts | {s['ece']:.3f} |")
    if rated:
        print("\n| set | people alone | LLM crowd (auto) | LLM + people | gain over the better |\n|---|---|---|---|---|")
        for r in rated:
            print(f"| {r['set']} | {r['people']:.3f} | {r['crowd']:.3f} | **{r['both']:.3f}** ± {r['spread']:.3f} | "
                  f"{100 * (r['both'] - max(r['people'], r['crowd'])):+.1f} pts |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", type=int, default=300, help="test items per data set (default: 300)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"data sets (default: {','.join(SETS)})")
    parser.add_argument("--no-people", action="store_true", help="skip the LLM + people comparison")
    parser.add_argument("--saved", action="store_true",
                        help=f"re-aggregate the votes the last run saved in {OUT.relative_to(ROOT)} (no pool)")
    parser.add_argument("--dev", action="store_true",
                        help="evaluate on dev ids after the gold pool, saved apart: for tuning (test ids stay unseen)")
    args = parser.parse_args()
    out = OUT.with_name(OUT.name + "-dev") if args.dev else OUT
    sets = args.sets.split(",")
    config = load_config(POOL)
    groups = config.fit_options()["groups"]  # what gateway/reliability.py passes
    if not args.saved:
        with running_pool(config), embedded_gateway(str(POOL)) as url:
            for name in sets:
                collect_set(url, config, name, args.test, args.dev, out)
            if not args.no_people:
                for name in RATED:
                    collect_people(url, name, args.test, args.dev, out)
    figures = [report_set(name, groups, out) for name in sets]
    rated = [] if args.no_people else [report_people(name, groups, out) for name in RATED]
    summary(figures, rated)


if __name__ == "__main__":
    main()
