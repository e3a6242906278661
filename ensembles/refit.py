"""A refit job: crowd-kit fit plus calibration for one schema and aggregator.

Runs in a worker process (it takes seconds and holds the GIL): it receives plain data and returns
plain JSON-able parameters, which the gateway publishes to the store.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.aggregators import get_aggregator, pick
from ensembles.aggregators.base import OUT_OF_FOLD, Triple
from ensembles.calibration import fit_calibration
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
          gold: Mapping[str, str], min_gold: int, debiased: bool = True) -> dict[str, Any]:
    """Fitted parameters, plus a `calibration` map when at least `min_gold` gold items have votes.

    `min_gold` is also the fewest gold items the fit itself learns from (soft-vote temperatures,
    `stacking`, `auto`'s choice; config `refit.min_gold`). Aggregators with `soft_fit` fit on the
    soft votes, the others on hard triples (Aggregator.fit_params); the calibration map is fitted on
    posteriors computed as the request path computes them, so it maps what it will be applied to; for
    `auto`, on the winner's out-of-fold posteriors from its cross-validation (Platt's own advice: calibrate
    on data the model was not fitted on).
    `debiased` (config `refit.debias`) divides each member's label bias out of its soft votes first
    (ensembles/debias.py).
    """
    agg = get_aggregator(aggregator)
    triples = hard_triples(item_votes)
    by_item: dict[str, list[Vote]] = defaultdict(list)
    for item, votes in item_votes.items():
        by_item[item] = [Vote.from_wire(v, len(labels)) for v in votes if v.get("label") is not None]
    params = agg.fit_params(triples, labels, gold, by_item, min_gold, debiased)
    confidences, correct = [], []
    if held_out := params.pop(OUT_OF_FOLD, None):
        confidences, correct = list(held_out["confidence"]), list(held_out["correct"])
    else:
        for item, truth in gold.items():
            if item in by_item:
                dist = agg.posterior(by_item[item], labels, params)
                best = pick(dist)
                confidences.append(dist[best])
                correct.append(labels[best] == truth)
    if len(confidences) >= min_gold:
        params["calibration"] = fit_calibration(confidences, correct)
        if by_votes := partial_calibrations(aggregator, by_item, labels, gold, params, min_gold):
            params["calibration"]["by_votes"] = by_votes
    params["fitted_on"] = {"items": len(by_item), "votes": len(triples), "gold": len(confidences)}
    return params


def partial_calibrations(aggregator: str, by_item: Mapping[str, Sequence[Vote]], labels: Sequence[str],
                         gold: Mapping[str, str], params: Mapping[str, Any], min_gold: int) -> dict[str, Any]:
    """A calibration map per number of votes k below an item's full count, from a random k-subset of each gold
    item's votes.

    What a cascade sees after k answers; seeded by item id, so a refit on the same votes is stable. With every
    vote in, the main map applies (for `auto` it is fitted out of fold, which these maps cannot be).
    """
    agg = get_aggregator(aggregator)
    most = max((len(by_item[item]) for item in gold if item in by_item), default=0)
    maps: dict[str, Any] = {}
    for k in range(1, most):
        confidences, correct = [], []
        for item, truth in gold.items():
            votes = by_item.get(item, ())
            if len(votes) < k:
                continue
            subset = random.Random(f"{item}:{k}").sample(list(votes), k)
            dist = agg.posterior(subset, labels, params)
            best = pick(dist)
            confidences.append(dist[best])
            correct.append(labels[best] == truth)
        if len(confidences) >= min_gold:
            maps[str(k)] = fit_calibration(confidences, correct)
    return maps
