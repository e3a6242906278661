"""Routing strategies side by side: full fan-out, `adaptive` and `cost_aware` (issue 7; prints figures, not a test).

Why this shape: the three strategies only differ in which members they ask, so they run in one
gateway process over the same members and the same aggregator, and share the reliability fitted
from one warm-up. Aim: `adaptive` within 0.5 accuracy points of full fan-out with at least 40%
fewer upstream calls.

Per dataset, split into dev and test by a hash of the id: label the dev items through fan-out,
post the gold labels of half of them and force a refit (reliability and calibration maps, as in
service); tune each router's knobs on the other half by replaying the gateway's request path on
the recorded dev votes (gateway/replay.py, what `crowd-gateway tune` does): the cheapest setting
whose accuracy there is within 0.5 points of fan-out's. Then the test items go through fan-out and
each tuned strategy, one strategy at a time, with the openai client at a fixed concurrency. The
gateway config holds every candidate setting as an ensemble, so the tuned one is served without a
restart.

Simulated (default): the harness's fake upstream (tests/harness/) serves six members of mixed skill, price and
latency. Each member's answer to each item is drawn once from a seeded RNG (right with the member's skill,
else a uniformly drawn wrong label: errors are independent, which flatters any vote) and scripted
by an id marker in the prompt.

Real (`--real`): the four workers of deploy/local-pool.yaml (the pool is started if it is not up,
and then stopped), dev gateway/data/sentiment_dev.jsonl, test sentiment_heldout.jsonl (or the
first N items of sentiment_sample.jsonl with `--items N`).

Run: .venv/bin/python bench/routing.py [--datasets yelp,tweets,intents] [--concurrency 16] [--seed 7]
                                       [--aggregator one_coin] [--no-calibration]
     .venv/bin/python bench/routing.py --real [--items 120] [--concurrency 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import APIError, AsyncOpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from ensembles.aggregators import REGISTRY
from ensembles.labels import LabelSet
from ensembles.votes import Vote
from gateway.config import Config, parse_config
from gateway.tools.datasets import load_dataset, split_of
from gateway.tools.embedded import embedded_gateway
from gateway.tools.pool import running_pool
from gateway.tools.replay import Recording
from gateway.task import build_task
from gateway.tools.tune import Point, fit_params, score
from routers.adaptive import PRICE_WEIGHTS
from routers.base import TARGETS
from tests.harness import start_upstream

DATASETS = {"yelp": "uci_sentiment_yelp.jsonl", "tweets": "tweets_sentiment_crowdflower.jsonl",
            "intents": "intents_bigbench.jsonl", "amazon": "uci_sentiment_amazon.jsonl",
            "imdb": "uci_sentiment_imdb.jsonl"}
AIM_POINTS = 0.5
AIM_FEWER_CALLS = 0.40
QUORUM = 2
USAGE = (120, 2)
"""Prompt and completion tokens of every simulated call: prices alone set the members' costs."""
TextOf = Callable[[dict[str, Any]], str]
"""What the client sends as the item's text."""
STOPS = ("confident", "exhausted", "escalated", "budget", "deadline")


@dataclass(frozen=True)
class SimMember:
    """A simulated worker: how often it is right, what a call costs and how long it takes."""

    name: str
    skill: float
    usd_per_mtok: float
    """Input price; output is twice that, as with hosted APIs."""
    latency_ms: float
    jitter_ms: float


POOL = (
    SimMember("tiny-a", 0.72, 0.02, 40, 20),
    SimMember("tiny-b", 0.76, 0.02, 50, 25),
    SimMember("small-a", 0.80, 0.04, 70, 35),
    SimMember("small-b", 0.83, 0.08, 100, 50),
    SimMember("mid", 0.86, 0.15, 150, 80),
    SimMember("large", 0.93, 1.00, 350, 150),
)


@dataclass(frozen=True)
class Strategy:
    """One ensemble of the gateway config: a router and its knobs over all members."""

    router: str
    routing: tuple[tuple[str, float], ...] = ()

    @property
    def name(self) -> str:
        return "-".join([self.router, *(f"{k}{v:g}" for k, v in self.routing)])

    @property
    def knobs(self) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in self.routing) or "-"

    def ensemble(self, members: Sequence[str], aggregator: str) -> dict[str, Any]:
        return {"name": self.name, "members": list(members), "aggregator": aggregator, "router": self.router,
                "routing": dict(self.routing), "quorum": QUORUM, "deadline_s": 300}


FANOUT = Strategy("fanout")


@dataclass
class Result:
    """One strategy's answers to a set of items, as the client saw them."""

    strategy: Strategy
    records: list[dict[str, Any]]
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def answered(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["annotation"]]

    @property
    def failed(self) -> int:
        return len(self.records) - len(self.answered)

    @property
    def accuracy(self) -> float:
        """Failed items count as wrong: a strategy cannot buy accuracy by failing hard items."""
        return sum(r["annotation"]["label"] == r["gold"] for r in self.answered) / len(self.records)

    @property
    def calls(self) -> float:
        return sum(r["annotation"]["calls"] for r in self.answered) / len(self.records)

    @property
    def cost_per_1000(self) -> float:
        return 1000 * sum(r["cost_usd"] for r in self.records) / len(self.records)

    def latency(self, q: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1] if len(self.latencies_ms) > 1 else float("nan")

    def stops(self) -> str:
        counts = Counter(r["annotation"]["stop_reason"] for r in self.answered)
        return " ".join(f"{s} {counts[s] / len(self.records):.1%}" for s in STOPS if counts[s]) or "-"


def item_text(row: dict[str, Any]) -> str:
    """The item's text plus an id marker the fake upstream answers by (`[id]` is never inside another id's marker)."""
    return f"{row['text']} [{row['id']}]"


def simulated_answers(member: SimMember, rows: Sequence[dict[str, Any]], labels: Sequence[str], seed: int,
                      dataset: str) -> dict[str, str]:
    """{id marker: answer}; one RNG per member and dataset, so adding a member changes no one else's answers."""
    rng = random.Random(f"{seed}:{dataset}:{member.name}")
    out = {}
    for row in rows:
        wrong = [label for label in labels if label != row["label"]]
        out[f"[{row['id']}]"] = row["label"] if rng.random() < member.skill else rng.choice(wrong)
    return out


async def label_all(v1: str, strategy: Strategy, rows: Sequence[dict[str, Any]], labels: Sequence[str],
                    phase: str, concurrency: int, text_of: TextOf) -> Result:
    """Every row through one ensemble with the official client, `concurrency` in flight; latency seen by the client."""
    client = AsyncOpenAI(base_url=v1, api_key="unused", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    result = Result(strategy, [])

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            started = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=strategy.name, messages=[{"role": "user", "content": text_of(row)}],
                    extra_body={"labels": list(labels), "item_id": f"{strategy.name}:{phase}:{row['id']}"})
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                ann, cost, error = r.model_extra["annotation"], r.usage.model_extra["cost_usd"], None
            except APIError as exc:
                ann, cost, error = None, 0.0, str(exc)
        return {"id": row["id"], "gold": row["label"], "annotation": ann, "cost_usd": cost, "error": error}

    try:
        result.records = list(await asyncio.gather(*(one(r) for r in rows)))
    finally:
        await client.close()
    if result.failed:
        print(f"  warning: {strategy.name} on {phase}: {result.failed} of {len(rows)} items failed, e.g. "
              f"{next(r['error'] for r in result.records if r['error'])}", file=sys.stderr)
    return result


def anchors(item_id: str) -> bool:
    """Half of the dev items, by a hash of the id: their gold anchors the fit and calibration; the other half
    scores the settings, so a calibration map's luck on the items it was fitted on cannot pick the knobs."""
    return split_of(f"{item_id}:gold") == "dev"


def warm_up(v1: str, rows: Sequence[dict[str, Any]], labels: Sequence[str], concurrency: int,
            text_of: TextOf) -> Result:
    """Fan-out over the dev rows, gold labels of half of them, a forced refit: the gateway learns reliability
    (and calibration) as it would in service. Returns the fan-out answers: every member's vote on every dev item."""
    warm = asyncio.run(label_all(v1, FANOUT, rows, labels, "dev", concurrency, text_of))
    with httpx.Client(base_url=v1, timeout=600) as http:
        for row in (r for r in rows if anchors(str(r["id"]))):
            http.post("/annotations/feedback", json={"item_id": f"{FANOUT.name}:dev:{row['id']}",
                                                     "label": row["label"], "source": "gold"}).raise_for_status()
        refit = http.post("/annotations/refit").raise_for_status().json()
        if not refit["refitted"]:
            raise RuntimeError(f"the refit after the warm-up published nothing: {refit}")
    return warm


def candidates(targets: Sequence[float], members: int) -> dict[str, list[Strategy]]:
    """Every setting of the knobs each router reads (as `crowd-gateway tune` searches them)."""
    return {"adaptive": [Strategy("adaptive", (("target", t), ("start", s), ("price_weight", w)))
                         for t, s, w in itertools.product(targets, range(QUORUM, members + 1), PRICE_WEIGHTS)],
            "cost_aware": [Strategy("cost_aware", (("target", t),)) for t in targets]}


def stored_vote(vote: dict[str, Any], labels: LabelSet) -> Vote:
    """A vote of a client's answer (its spelling, its order of soft-vote probabilities) as the gateway stores it."""
    probs = vote["probs"] and tuple(vote["probs"][labels.positions.index(i)] for i in range(len(labels.canonical)))
    return Vote(**{**vote, "label": vote["label"] and labels.canonical_of(vote["label"]), "probs": probs})


def tune(config: Config, grid: dict[str, list[Strategy]], warm: Result, labels: Sequence[str]) -> dict[str, Strategy]:
    """Per router, the cheapest setting (fewest calls for adaptive, lowest cost for cost_aware) whose accuracy on
    the dev items outside the gold half is within AIM_POINTS of fan-out's, else the most accurate one. Scored by
    replaying the gateway's own request path on the warm-up's recorded votes (gateway/replay.py) under parameters
    fitted as the gateway's refit fits them, so tuning costs no model call and never sees the test rows."""
    stored = LabelSet.adhoc(labels)  # the answers are in the client's labels; the replay reads the stored form
    recording: Recording = {str(rec["id"]): {v["member"]: stored_vote(v, stored) for v in rec["annotation"]["votes"]}
                            for rec in warm.answered}
    gold = {str(rec["id"]): stored.canonical_of(rec["gold"]) or rec["gold"] for rec in warm.answered}
    tasks = [build_task({"messages": [{"role": "user", "content": "replayed"}], "labels": list(labels),
                         "item_id": item_id}, "chat", config) for item_id in recording if not anchors(item_id)]
    ensembles = {e.name: e for e in config.ensembles}
    params = fit_params(config, ensembles[FANOUT.name], recording, stored.canonical,
                        {i: g for i, g in gold.items() if anchors(i)})

    async def scored(strategy: Strategy) -> Point:
        return await score(config, ensembles[strategy.name], {}, tasks, gold, recording, params)

    reference = asyncio.run(scored(FANOUT))
    print(f"tuning on the {len(tasks)} dev items outside the gold half, replayed (fan-out: accuracy "
          f"{reference.accuracy:.3f}, {reference.calls_per_item:.2f} calls/item, USD {reference.cost_per_1k:.4f} per "
          f"1,000 labels); frontier of each router's settings, * = chosen (the cheapest within {AIM_POINTS} pts of "
          f"fan-out):")
    print("| router | knobs | dev accuracy | calls/item | USD per 1,000 labels |\n|---|---|---|---|---|")
    chosen = {}
    for router, strategies in grid.items():
        price = (lambda p: (p.calls_per_item, p.cost_per_1k)) if router == "adaptive" else \
            (lambda p: (p.cost_per_1k, p.calls_per_item))
        points = {s: asyncio.run(scored(s)) for s in strategies}
        good = [s for s, p in points.items() if p.accuracy >= reference.accuracy - AIM_POINTS / 100 - 1e-9]
        chosen[router] = (min(good, key=lambda s: price(points[s])) if good else
                          max(points, key=lambda s: (points[s].accuracy, tuple(-x for x in price(points[s])))))
        best_so_far = -1.0
        for s in sorted(points, key=lambda s: price(points[s])):
            p = points[s]
            if p.accuracy > best_so_far + 1e-9 or s == chosen[router]:
                best_so_far = max(best_so_far, p.accuracy)
                print(f"| {router}{' *' if s == chosen[router] else ''} | {s.knobs} | {p.accuracy:.3f} | "
                      f"{p.calls_per_item:.2f} | {p.cost_per_1k:.4f} |")
    return chosen


def measure(v1: str, chosen: dict[str, Strategy], rows: Sequence[dict[str, Any]], labels: Sequence[str],
            concurrency: int, text_of: TextOf) -> list[Result]:
    """The test rows through fan-out and each chosen strategy, one strategy at a time (latencies never mix)."""
    return [asyncio.run(label_all(v1, s, rows, labels, "test", concurrency, text_of))
            for s in (FANOUT, chosen["adaptive"], chosen["cost_aware"])]


def gateway_config(members: list[dict[str, Any]], grid: dict[str, list[Strategy]], args: argparse.Namespace,
                   **extra: Any) -> dict[str, Any]:
    """Fan-out plus every candidate over the same members. Refits only when asked, so the test items' votes
    never move the parameters between strategies. With --no-calibration no calibration map is ever fitted
    (it would need more gold than the dev split has): routers compare the raw posterior with the target."""
    names = [m["name"] for m in members]
    strategies = [FANOUT, *itertools.chain.from_iterable(grid.values())]
    return {"gateway": {"api_keys_env": None},
            "refit": {"every_items": 10**9, "every_s": 10**9, "min_items": 20,
                      "min_gold_for_calibration": 10**9 if args.no_calibration else 20},
            "members": members, "ensembles": [s.ensemble(names, args.aggregator) for s in strategies], **extra}


def member_accuracy(fan: Result, about: dict[str, str]) -> str:
    """Each member's accuracy on the measured items, from fan-out's votes (the crowd must beat the best one)."""
    right: dict[str, list[bool]] = {}
    for rec in fan.answered:
        for vote in rec["annotation"]["votes"]:
            right.setdefault(vote["member"], []).append(vote["label"] == rec["gold"])
    return ", ".join(f"{name} {sum(v) / len(v):.3f} ({about[name]})" for name, v in right.items())


def report(runs: list[tuple[str, list[Result]]]) -> None:
    """One table, every dataset and strategy, test items only; then whether adaptive met the aim."""
    print("\n| data | strategy | knobs | accuracy | calls/item | USD per 1,000 labels | p50 / p99 ms | stops | "
          "vs fan-out: accuracy | fewer calls | cheaper |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for data, results in runs:
        fan = results[0]
        for r in results:
            versus = ("| - | - | - " if r is fan else
                      f"| {100 * (r.accuracy - fan.accuracy):+.1f} pts | {1 - r.calls / fan.calls:.0%} "
                      f"| {1 - r.cost_per_1000 / fan.cost_per_1000:.0%} ")
            failed = f" ({r.failed} failed)" if r.failed else ""
            print(f"| {data} | {r.strategy.router} | {r.strategy.knobs} | {r.accuracy:.3f}{failed} | {r.calls:.2f} | "
                  f"{r.cost_per_1000:.4f} | {r.latency(50):.0f} / {r.latency(99):.0f} | {r.stops()} {versus}|")
    print()
    for data, (fan, adaptive, _) in runs:
        met = (adaptive.accuracy >= fan.accuracy - AIM_POINTS / 100 - 1e-9
               and 1 - adaptive.calls / fan.calls >= AIM_FEWER_CALLS)
        print(f"{data}: aim (adaptive within {AIM_POINTS} pts of fan-out with >= {AIM_FEWER_CALLS:.0%} fewer "
              f"calls) {'met' if met else 'NOT met'}: {100 * (adaptive.accuracy - fan.accuracy):+.1f} pts, "
              f"{1 - adaptive.calls / fan.calls:.0%} fewer calls")


def compare(config: dict[str, Any], grid: dict[str, list[Strategy]], tmp: Path, dev: Sequence[dict[str, Any]],
            test: Sequence[dict[str, Any]], labels: Sequence[str], concurrency: int, text_of: TextOf) -> list[Result]:
    """Warm-up on dev, tuning on dev, then fan-out and the chosen settings on test, in one gateway process."""
    path = Path(tempfile.mkstemp(prefix="config-", suffix=".yaml", dir=tmp)[1])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with embedded_gateway(str(path), log=tmp / "gateway.log") as v1:
        warm = warm_up(v1, dev, labels, concurrency, text_of)
        chosen = tune(parse_config(config), grid, warm, labels)
        return measure(v1, chosen, test, labels, concurrency, text_of)


def simulated(args: argparse.Namespace) -> None:
    """Every dataset against the same six scripted members; one fresh gateway per dataset (fresh parameters)."""
    grid = candidates(args.targets, len(POOL))
    print(f"Simulated members (answers seeded with --seed {args.seed}; latency jitter seeded per member by "
          f"the fake upstream), {args.concurrency} items in flight, aggregator {args.aggregator}, quorum {QUORUM}"
          f"{', no calibration' if args.no_calibration else ''}:")
    print("| member | skill | USD per M input / output tokens | latency ms (+ exponential jitter, mean) |")
    print("|---|---|---|---|")
    for m in POOL:
        print(f"| {m.name} | {m.skill:.2f} | {m.usd_per_mtok:g} / {2 * m.usd_per_mtok:g} | "
              f"{m.latency_ms:g} (+{m.jitter_ms:g}) |")
    tmp = Path(tempfile.mkdtemp(prefix="crowd-bench-routing-"))
    with start_upstream() as up:
        members = [{"name": m.name, "base_url": up.base_url(m.name), "model": m.name, "retries": 0,
                    "timeout_s": 30, "max_concurrency": 256,
                    "price": {"input_usd_per_mtok": m.usd_per_mtok, "output_usd_per_mtok": 2 * m.usd_per_mtok}}
                   for m in POOL]
        about = {m.name: f"skill {m.skill:.2f}" for m in POOL}
        runs = []
        for dataset in args.datasets:
            path = ROOT.parent / "shared" / "datasets" / DATASETS[dataset]
            dev = load_dataset(path, "dev", args.dev_items)
            test = load_dataset(path, "test", args.test_items)
            labels = sorted({r["label"] for r in dev + test})
            for m in POOL:
                up.script(m.name, keywords=simulated_answers(m, dev + test, labels, args.seed, dataset),
                          latency_ms=m.latency_ms, jitter_ms=m.jitter_ms, usage=list(USAGE))
            print(f"\n{dataset}: {DATASETS[dataset]}, {len(labels)} labels, {len(dev)} dev / {len(test)} test items "
                  f"(split by a hash of the id)")
            results = compare(gateway_config(members, grid, args), grid, tmp, dev, test, labels,
                              args.concurrency, item_text)
            print(f"members on the test items (fan-out votes): {member_accuracy(results[0], about)}")
            runs.append((f"{dataset} ({len(labels)} labels)", results))
    report(runs)
    print(f"\ngateway logs: {tmp}")


def real(args: argparse.Namespace) -> None:
    """The local pool's workers, prompts and prices as deploy/local-pool.yaml has them; only the ensembles differ."""
    pool_yaml = yaml.safe_load((ROOT / "deploy" / "local-pool.yaml").read_text())
    labels = pool_yaml["tasks"][0]["labels"]
    data = ROOT / "gateway" / "data"
    dev = load_dataset(data / "sentiment_dev.jsonl")
    test = load_dataset(data / "sentiment_sample.jsonl", limit=args.items) if args.items else \
        load_dataset(data / "sentiment_heldout.jsonl")
    grid = candidates(args.targets, len(pool_yaml["members"]))
    config = gateway_config(pool_yaml["members"], grid, args, pool=pool_yaml["pool"], tasks=pool_yaml["tasks"])
    about = {m["name"]: f"USD/M tokens {m['price']['input_usd_per_mtok']:g} / {m['price']['output_usd_per_mtok']:g}"
             for m in pool_yaml["members"]}
    print(f"Real local pool (deploy/local-pool.yaml, {len(about)} workers), aggregator {args.aggregator}, "
          f"quorum {QUORUM}{', no calibration' if args.no_calibration else ''}, {args.concurrency} items in flight; "
          f"warm-up and tuning on {len(dev)} dev items (gateway/data/sentiment_dev.jsonl), {len(test)} test items "
          f"({'the first of gateway/data/sentiment_sample.jsonl' if args.items else 'sentiment_heldout.jsonl'})")
    tmp = Path(tempfile.mkdtemp(prefix="crowd-bench-routing-"))
    with running_pool(parse_config(config)):
        results = compare(config, grid, tmp, dev, test, labels, args.concurrency, lambda row: row["text"])
    print(f"members on the test items (fan-out votes): {member_accuracy(results[0], about)}")
    report([("real pool, sentiment (2 labels)", results)])
    print(f"\ngateway log: {tmp / 'gateway.log'}")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated run still stops what it started
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="the real local pool instead of simulated members")
    parser.add_argument("--datasets", default="yelp,tweets,intents", help=f"simulated: any of {', '.join(DATASETS)}")
    parser.add_argument("--dev-items", type=int, default=400, help="simulated: dev items per dataset")
    parser.add_argument("--test-items", type=int, default=400, help="simulated: test items per dataset")
    parser.add_argument("--items", type=int, help="real: the first N items of sentiment_sample.jsonl "
                                                  "instead of sentiment_heldout.jsonl")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in (*TARGETS, 0.995, 0.999)),
                        help="`routing.target` values tried on dev (with every `routing.start` for adaptive)")
    parser.add_argument("--concurrency", type=int, help="items in flight (default: simulated 16, real 3)")
    parser.add_argument("--seed", type=int, default=7, help="simulated: the members' answers")
    parser.add_argument("--aggregator", default="one_coin", choices=sorted(REGISTRY),
                        help="shared by every strategy (one_coin matches the simulated members' uniform errors)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="fit no calibration map: routers compare the aggregator's raw posterior with the target")
    args = parser.parse_args()
    args.datasets = args.datasets.split(",")
    args.targets = [float(t) for t in args.targets.split(",")]
    args.concurrency = args.concurrency or (3 if args.real else 16)
    (real if args.real else simulated)(args)


if __name__ == "__main__":
    main()
