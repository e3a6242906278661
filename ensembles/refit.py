"""A refit job: everything one schema's answers are computed from, fitted from its stored votes and gold.

Runs in a worker process (it takes seconds and holds the GIL): it receives plain data and returns plain
JSON-able parameters, which the gateway publishes to the store. The steps, in the order the request path undoes
them (Aggregator.posterior):

1. split the people's votes from the LLM members' (people join last, step 5);
2. each member's label bias (ensembles/debias.py) and soft-vote temperature (ensembles/temperature.py);
3. the aggregator's own fit on the debiased, tempered votes (one typed input, FitData);
4. the aggregator's posterior on each gold item while that item was held out (crossval.py; `auto` brings its
   winner's), and the temperature of the whole posterior that fits those best (`crowd_temperature`);
5. the people's reliability (ensembles/humans.py), from every item they labelled, with the tempered LLM
   posterior as each item's prior;
6. a Platt map from the final posterior's top probability to the chance of being right (ensembles/calibration.py),
   fitted on the held-out gold posteriors, plus one per number of votes a cascade decides after.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.aggregators import get_aggregator, pick
from ensembles.aggregators.auto import OUT_OF_FOLD
from ensembles.aggregators.base import MIN_GOLD, Aggregator, FitData, Metric, Triple, split_items
from ensembles.calibration import fit_calibration
from ensembles.crossval import Dists, folds, out_of_fold, scores
from ensembles.debias import debias_items, fit_biases, label_prior
from ensembles.humans import fit_humans, join
from ensembles.temperature import best_temperature, fit_temperatures, temper, temper_items
from ensembles.votes import Vote


def hard_triples(item_votes: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Triple]:
    """(item, member, label) for every valid vote: what crowd-kit fits on."""
    return [(item, v["member"], v["label"]) for item, votes in item_votes.items() for v in votes
            if v.get("label") is not None]


def overlapping_items(triples: Sequence[Triple]) -> int:
    """Items with at least two votes: what reliability can be learned from."""
    counts: dict[str, int] = defaultdict(int)
    for item, _, _ in triples:
        counts[item] += 1
    return sum(1 for n in counts.values() if n >= 2)


def refit(aggregator: str, item_votes: Mapping[str, Sequence[Mapping[str, Any]]], labels: Sequence[str],
          gold: Mapping[str, str], min_gold: int = MIN_GOLD, debiased: bool = True,
          groups: Mapping[str, str] | None = None, metric: Metric = "accuracy") -> dict[str, Any]:
    """The published parameters of one schema under `aggregator` (the steps of the module docstring).

    `min_gold` (config `refit.min_gold_for_calibration`) is the fewest gold items anything is fitted or calibrated
    on; `debiased` (`refit.debias`) turns step 2's bias off; `groups` maps members to look-alike groups (members
    serving one model); `metric` (`refit.metric`) is what `auto` chooses by and `stacking` weighs classes for.
    """
    agg = get_aggregator(aggregator)
    labels = tuple(labels)
    parsed = {item: [Vote.from_wire(v, len(labels)) for v in votes if v.get("label") is not None]
              for item, votes in item_votes.items()}
    raw, people = split_items(parsed)
    gold = {i: g for i, g in gold.items() if g in labels}
    biases = fit_biases(raw, len(labels), prior=label_prior(gold, labels)) if debiased else {}
    llm = debias_items(raw, biases, labels) if biases else raw
    temperatures = fit_temperatures(llm, labels, gold, min_gold)
    data = FitData(labels, temper_items(llm, temperatures), gold, people, dict(groups or {}), min_gold, metric)
    params: dict[str, Any] = dict(agg.fit(data) or {})
    held_out = params.pop(OUT_OF_FOLD, None) or _held_out(agg, data, params)
    if temperatures:
        params["temperatures"] = temperatures
    if biases:
        params["biases"] = {m: list(b) for m, b in biases.items()}
    if len(held_out) >= min_gold:
        params["crowd_temperature"] = best_temperature([held_out[i] for i in sorted(held_out)],
                                                       [labels.index(gold[i]) for i in sorted(held_out)])
    t = params.get("crowd_temperature", 1.0)
    crowd = {i: list(temper(held_out[i] if i in held_out else agg.combine(data.votes.get(i, ()), labels, params), t))
             for i in people}
    if humans := fit_humans(crowd, people, labels, gold):
        params["humans"] = humans
        joined = [i for i in held_out if i in people]
        if len(joined) >= min_gold:
            humans["temperature"] = best_temperature([join(held_out[i], people[i], labels, params) for i in joined],
                                                     [labels.index(gold[i]) for i in joined])
    final = {i: join(dist, people.get(i, ()), labels, params) for i, dist in held_out.items()}
    params["baseline"] = _baseline(gold, labels)
    if len(final) >= min_gold:
        params["calibration"] = fit_calibration([max(d) for d in final.values()],
                                                [labels[pick(d)] == gold[i] for i, d in final.items()])
        if by_votes := partial_calibrations(agg, raw, people, labels, gold, params, min_gold):
            params["calibration"]["by_votes"] = by_votes
        params["held_out"] = scores(final, gold, labels)
    params["fitted_on"] = {"items": len(parsed), "votes": len(data.triples), "gold": len(held_out),
                           "people": len({v.member for vs in people.values() for v in vs}),
                           "people_items": len(people)}
    return params


def _held_out(agg: Aggregator, data: FitData, fitted: Mapping[str, Any]) -> Dists:
    """Each gold item's posterior while it was held out of the fit (the fit on everything when it ignores gold)."""
    if not data.gold_items:
        return {}
    dists, _ = out_of_fold(agg, data, folds(data.gold_items), fitted)
    return dists


def _baseline(gold: Mapping[str, str], labels: Sequence[str]) -> dict[str, Any]:
    """The trivial answer: the most frequent gold label, and its share of the gold (what a crowd must beat)."""
    if not gold:
        return {"label": None, "accuracy": None}
    counts = {label: sum(g == label for g in gold.values()) for label in labels}
    best = max(labels, key=counts.__getitem__)
    return {"label": best, "accuracy": counts[best] / len(gold)}


def partial_calibrations(agg: Aggregator, by_item: Mapping[str, Sequence[Vote]], people: Mapping[str, Sequence[Vote]],
                         labels: Sequence[str], gold: Mapping[str, str], params: Mapping[str, Any],
                         min_gold: int) -> dict[str, Any]:
    """A calibration map per number of members' votes k below an item's full count, from a random k-subset of each
    gold item's members' votes (with the item's people's votes, which are counted apart, as the request path does).

    What a cascade sees after k answers; seeded by item id, so a refit on the same votes is stable. With every
    vote in, the main map applies (fitted out of fold, which these maps cannot be).
    """
    most = max((len(by_item[item]) for item in gold if item in by_item), default=0)
    maps: dict[str, Any] = {}
    for k in range(1, most):
        confidences, correct = [], []
        for item, truth in gold.items():
            votes = by_item.get(item, ())
            if len(votes) < k:
                continue
            subset = random.Random(f"{item}:{k}").sample(list(votes), k)
            dist = agg.posterior([*subset, *people.get(item, ())], labels, params)
            best = pick(dist)
            confidences.append(dist[best])
            correct.append(labels[best] == truth)
        if len(confidences) >= min_gold:
            maps[str(k)] = fit_calibration(confidences, correct)
    return maps
