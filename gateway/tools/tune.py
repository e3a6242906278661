"""`crowd-gateway tune`: search an ensemble's thresholds on labeled dev data and write the chosen ones.

Every member, and the escalation target, answers every dev item once through the real request
path. Reliability and calibration are fitted from those votes and the dev gold as the gateway's
background refit fits them (ensembles/refit.py), so routers rank members as they will once the
gateway has learned them; then each setting of the knobs the ensemble's router reads is scored by
replaying the gateway's own routing, aggregation and escalation on the recorded votes
(gateway/replay.py). The cost-accuracy frontier is printed and the chosen point written into the
YAML config with its comments kept.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensembles.aggregators import REGISTRY, Params
from ensembles.refit import refit
from gateway.config import Config, Ensemble, load_config
from gateway.errors import APIError
from gateway.tools import HelpFormatter, UsageError
from gateway.tools.baseline import most_frequent
from gateway.tools.contribution import MIN_ITEMS, contributions, droppable, print_contributions
from gateway.tools.datasets import load_dataset, row_ids
from gateway.tools.replay import Recording, ReplayAnnotator, asked_members, record
from gateway.tools.yaml_edit import set_key
from gateway.task import AnnotationTask, build_task
from routers import REGISTRY as ROUTERS
from routers.base import TARGETS

OFF = 0.0
"""`escalation.below: 0` never escalates: escalation off, with its `to` kept in the config."""
EPS = 1e-9

Setting = dict[str, float]
"""Knob path (`section.key` of an ensemble) -> value."""


@dataclass(frozen=True, slots=True)
class Point:
    setting: Setting
    accuracy: float
    calls_per_item: float
    cost_per_1k: float
    escalation_rate: float


def tunable(config: Config, name: str) -> Ensemble:
    """The named ensemble, if tune can replay its router and it has a threshold to search."""
    ens = next((e for e in config.ensembles if e.name == name), None)
    if ens is None:
        raise UsageError(f"no ensemble {name!r} in the config; ensembles: {[e.name for e in config.ensembles]}")
    replayable = sorted(n for n, cls in ROUTERS.items() if cls.replayable)
    if ens.router not in replayable:
        raise UsageError(f"ensemble {name!r} uses router {ens.router!r}; tune replays {replayable} "
                         f"(routing by live load cannot be replayed offline)")
    if ens.aggregator not in REGISTRY:
        raise UsageError(f"ensemble {name!r}: unknown aggregator {ens.aggregator!r}; known: {sorted(REGISTRY)}")
    if not knob_axes(ens) and ens.escalation is None:
        raise UsageError(f"ensemble {name!r} (router {ens.router}, no escalation) has no threshold to tune")
    return ens


def load_items(path: Path, config: Config, labels: str | None, task: str | None,
               limit: int | None) -> tuple[list[AnnotationTask], dict[str, str]]:
    """Dev rows (id, text, label) as the gateway's annotation tasks, and their gold labels by item id (spelt as the
    gateway stores them: the label set's canonical form, which the replayed votes are in)."""
    rows = load_dataset(path, limit=limit)
    if not rows:
        raise UsageError(f"{path}: no rows")
    ids = row_ids(rows)
    gold = {item_id: str(row["label"]) for item_id, row in zip(ids, rows)}
    spec = label_spec(config, labels, task, gold)
    try:
        tasks = [build_task({"messages": [{"role": "user", "content": str(row["text"])}], "item_id": item_id,
                             **spec}, "chat", config) for item_id, row in zip(ids, rows)]
    except APIError as exc:
        raise UsageError(f"{path}: {exc.message}") from None
    label_set = tasks[0].label_set
    if unknown := sorted(g for g in set(gold.values()) if label_set.canonical_of(g) is None):
        raise UsageError(f"{path}: labels {unknown} are not in the label set {list(label_set.asked)}")
    return tasks, {item_id: label_set.canonical_of(g) or g for item_id, g in gold.items()}


def label_spec(config: Config, labels: str | None, task: str | None, gold: dict[str, str]) -> dict[str, Any]:
    """What clients send to name the label set: a configured task, the given labels, else the dataset's."""
    if task:
        if config.task(task) is None:
            raise UsageError(f"unknown task {task!r}; configured tasks: {[t.name for t in config.tasks]}")
        return {"task": task}
    return {"labels": [label.strip() for label in labels.split(",")] if labels else sorted(set(gold.values()))}


def held_out(item_id: str, fraction: float) -> bool:
    """A stable split by a hash of the id, so the held-out slice is the same on every run."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest()) / 2**64 < fraction


def fit_params(config: Config, ens: Ensemble, recording: Recording, labels: Sequence[str],
               gold: dict[str, str]) -> Params:
    """The aggregator's parameters and calibration map, fitted as the gateway's refit fits them."""
    return refit(ens.aggregator, on_the_wire(recording), labels, gold, **config.fit_options())


def on_the_wire(recording: Recording) -> dict[str, list[dict[str, Any]]]:
    """The recorded votes as the gateway stores them, what the refit reads."""
    return {item_id: [vote.wire() for vote in votes.values()] for item_id, votes in recording.items()}


def knob_axes(ens: Ensemble) -> dict[str, Sequence[float]]:
    """The routing knobs the ensemble's router says are worth searching, with their grids."""
    tunables = ROUTERS[ens.router].tunables(ens.quorum, len(ens.members))
    return {f"routing.{knob}": values for knob, values in tunables.items()}


def grid(ens: Ensemble) -> list[Setting]:
    """Every combination of the values of the knobs this ensemble's router and escalation read."""
    axes = knob_axes(ens)
    if ens.escalation is not None:
        axes["escalation.below"] = (OFF, *TARGETS)
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def variant(ens: Ensemble, setting: Setting) -> Ensemble:
    """The ensemble with the setting's knobs in place."""
    update: dict[str, Any] = {}
    for path, value in setting.items():
        section, key = path.split(".")
        update[section] = update.get(section, getattr(ens, section)).model_copy(update={key: value})
    return ens.model_copy(update=update)


async def score(config: Config, ens: Ensemble, setting: Setting, tasks: Sequence[AnnotationTask],
                gold: dict[str, str], recording: Recording, params: Params) -> Point:
    """Accuracy and cost of one setting: the gateway's own request path, replayed on the recorded votes."""
    annotator = ReplayAnnotator(config, variant(ens, setting), recording)
    right = calls = cost = escalated = 0.0
    for task in tasks:
        try:
            outcome = await annotator.run(task, params)
        except APIError:  # quorum not met: no label, counted as wrong
            continue
        right += outcome.label == gold[task.item_id]
        calls += outcome.calls
        cost += outcome.cost_usd
        escalated += outcome.escalated
    n = len(tasks)
    return Point(setting, right / n, calls / n, 1000 * cost / n, escalated / n)


def frontier(points: Sequence[Point]) -> list[Point]:
    """The Pareto frontier, cheapest first: each point is more accurate than every cheaper one."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.cost_per_1k, -p.accuracy, p.calls_per_item)):
        if not front or point.accuracy > front[-1].accuracy + EPS:
            front.append(point)
    return front


def choose(front: Sequence[Point], target_accuracy: float | None, budget_per_1k: float | None) -> Point:
    """The cheapest point reaching the target accuracy, or the most accurate one within the budget."""
    if target_accuracy is not None:
        reaching = [p for p in front if p.accuracy >= target_accuracy - EPS]
        if not reaching:
            raise UsageError(f"no setting reaches accuracy {target_accuracy:g} on the dev items; the best "
                             f"achievable is {front[-1].accuracy:.3f} at ${front[-1].cost_per_1k:.6f} per 1,000 labels")
        return reaching[0]
    assert budget_per_1k is not None
    within = [p for p in front if p.cost_per_1k <= budget_per_1k + EPS * budget_per_1k]
    if not within:
        raise UsageError(f"no setting costs at most ${budget_per_1k:g} per 1,000 labels; the cheapest costs "
                         f"${front[0].cost_per_1k:.6f} (accuracy {front[0].accuracy:.3f})")
    return within[-1]


def write_config(source: Path, dest: Path, ensemble: str, setting: Setting) -> None:
    """Write the setting into the ensemble's entry in place (one knob, one changed line: comments, quoting and
    wrapped flow mappings kept, gateway/tools/yaml_edit.py); then re-validate."""
    def entry(data: Any) -> Any:
        return next(e for e in data["ensembles"] if e["name"] == ensemble)

    text = source.read_text()
    for path, value in setting.items():
        section, key = path.split(".")
        try:
            text = set_key(text, lambda data: entry(data)[section], key, f"{value:g}")
        except KeyError:  # the entry has no such section yet
            text = set_key(text, entry, section, f"{{{key}: {value:g}}}")
    dest.write_text(text)
    load_config(dest)


def _value(path: str, value: float) -> str:
    return "off" if path == "escalation.below" and value == OFF else f"{value:g}"


def describe(setting: Setting) -> str:
    return ", ".join(f"{path} {_value(path, value)}" for path, value in setting.items())


def check_recording(recording: Recording) -> None:
    if not any(vote.valid for votes in recording.values() for vote in votes.values()):
        first = next(vote.error for votes in recording.values() for vote in votes.values())
        raise UsageError(f"no member gave a valid answer on any dev item (e.g. {first})")


def print_members(recording: Recording, gold: dict[str, str], names: Sequence[str]) -> None:
    """Each worker alone, so the crowd's figures can be read against its best member."""
    print("| member | accuracy alone | valid answers | USD per 1,000 |\n|---|---|---|---|")
    for name in names:
        votes = [(item_id, votes[name]) for item_id, votes in recording.items()]
        right = sum(vote.label == gold[item_id] for item_id, vote in votes)
        valid = sum(vote.valid for _, vote in votes)
        cost = sum(vote.cost_usd for _, vote in votes)
        print(f"| {name} | {right / len(votes):.3f} | {valid}/{len(votes)} | {1000 * cost / len(votes):.6f} |")
    baseline = most_frequent(gold[item_id] for item_id in recording)
    if baseline is not None:
        print(f"| {baseline.describe()} | {baseline.accuracy:.3f} | {len(recording)}/{len(recording)} | 0 |")


def recommend_members(recording: Recording, labels: Sequence[str], gold: dict[str, str], keep: int = 1) -> list[str]:
    """Each member's marginal contribution to `auto` (fitted on one half of the tuning items, split by id, scored
    on the other), and the members worth dropping: the crowd is measurably more accurate without them (at least
    MIN_ITEMS scored items, an interval below zero), leaving at least `keep` members."""
    votes = on_the_wire(recording)
    fit_on = {i: g for i, g in gold.items() if not held_out(i, 0.5)}
    scored_on = {i: g for i, g in gold.items() if held_out(i, 0.5)}
    if not fit_on or not scored_on:
        return []
    with_all, contribution = contributions(votes, labels, fit_on, scored_on)
    print_contributions(with_all, contribution, len(fit_on), len(scored_on))
    if len(scored_on) < MIN_ITEMS:
        print(f"no recommendation on members: {len(scored_on)} scored items are too few to tell (at least "
              f"{MIN_ITEMS})")
        return []
    drop = droppable(contribution, keep)
    if drop:
        print(f"recommendation: drop {', '.join(drop)} from the ensemble (auto is measurably more accurate without "
              f"{'it' if len(drop) == 1 else 'each of them'}, and each costs a call per item)")
    return drop


def print_frontier(front: Sequence[Point], searched: int, knobs: Sequence[str]) -> None:
    print(f"\nCost-accuracy frontier ({len(front)} of {searched} settings; the others cost more for no more "
          f"accuracy):")
    print("| " + " | ".join(knobs) + " | accuracy | calls per item | USD per 1,000 labels | escalated |")
    print("|" + "---|" * (len(knobs) + 4))
    for p in front:
        cells = [_value(k, p.setting[k]) for k in knobs]
        print(f"| {' | '.join(cells)} | {p.accuracy:.3f} | {p.calls_per_item:.2f} | {p.cost_per_1k:.6f} "
              f"| {p.escalation_rate:.1%} |")


def check_args(args: argparse.Namespace) -> None:
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise UsageError("--target-accuracy must be in (0, 1]")
    if args.budget_usd_per_1k is not None and args.budget_usd_per_1k <= 0:
        raise UsageError("--budget-usd-per-1k must be positive")
    if not 0 <= args.holdout_fraction < 1:
        raise UsageError("--holdout-fraction must be in [0, 1)")
    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("--concurrency and --limit must be at least 1")


async def tune(args: argparse.Namespace) -> int:
    check_args(args)
    config = load_config(args.config)
    ens = tunable(config, args.ensemble)
    tasks, gold = load_items(Path(args.dataset), config, args.labels, args.task, args.limit)
    holdout = [t for t in tasks if held_out(t.item_id, args.holdout_fraction)]
    tuning = [t for t in tasks if not held_out(t.item_id, args.holdout_fraction)]
    if not tuning or (args.holdout_fraction and not holdout):
        raise UsageError(f"--holdout-fraction {args.holdout_fraction:g} leaves {len(tuning)} items to tune on and "
                         f"{len(holdout)} held out: both need at least one")
    recording = await record(config, ens, tasks, args.concurrency)
    check_recording(recording)
    print_members(recording, gold, asked_members(ens))
    labels = tasks[0].labels
    tuning_ids = {t.item_id for t in tuning}
    recommend_members(recording, labels, {i: g for i, g in gold.items() if i in tuning_ids}, ens.quorum)
    params = fit_params(config, ens, {i: v for i, v in recording.items() if i in tuning_ids}, labels,
                        {i: g for i, g in gold.items() if i in tuning_ids})
    settings = grid(ens)
    points = [await score(config, ens, s, tuning, gold, recording, params) for s in settings]
    front = frontier(points)
    print_frontier(front, len(points), list(settings[0]))
    chosen = choose(front, args.target_accuracy, args.budget_usd_per_1k)
    baseline = most_frequent(gold[t.item_id] for t in tuning)
    print(f"\nchosen on {len(tuning)} dev items: {describe(chosen.setting)}: accuracy {chosen.accuracy:.3f}, "
          f"${chosen.cost_per_1k:.6f} per 1,000 labels, {chosen.calls_per_item:.2f} calls per item"
          + (f"; {baseline.describe()}: {baseline.accuracy:.3f}" if baseline else ""))
    if holdout:
        check = await score(config, ens, chosen.setting, holdout, gold, recording, params)
        print(f"held out ({len(holdout)} items): accuracy {check.accuracy:.3f}, ${check.cost_per_1k:.6f} per "
              f"1,000 labels, {check.calls_per_item:.2f} calls per item")
    dest = Path(args.output or args.config)
    write_config(Path(args.config), dest, ens.name, chosen.setting)
    print(f"wrote {dest}: ensemble {ens.name!r}: {describe(chosen.setting)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """A UsageError becomes one line and exit 2 in `gateway.cli.main`."""
    return asyncio.run(tune(args))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tune", help="search an ensemble's thresholds on labeled dev data and write them",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", required=True, help="the gateway's YAML config (rewritten unless --output)")
    p.add_argument("--dataset", required=True, help="labeled dev data: CSV, JSONL or JSONL.gz with id, text, label")
    p.add_argument("--ensemble", required=True, help="the ensemble whose thresholds are searched")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-accuracy", type=float, help="choose the cheapest setting reaching this accuracy")
    goal.add_argument("--budget-usd-per-1k", type=float, help="choose the most accurate setting within this cost")
    spec = p.add_mutually_exclusive_group()
    spec.add_argument("--labels", help="label set, comma-separated, as clients will send it (default: the "
                                       "dataset's labels, sorted)")
    spec.add_argument("--task", help="a task named in the config (its label set and prompt)")
    p.add_argument("--output", help="write the tuned config here instead of over --config")
    p.add_argument("--limit", type=int, help="use the first N rows")
    p.add_argument("--concurrency", type=int, default=16, help="member calls in flight while recording")
    p.add_argument("--holdout-fraction", type=float, default=0.0,
                   help="keep this share of the items (split by id) out of the search and report the choice on it")
    p.set_defaults(func=run)
