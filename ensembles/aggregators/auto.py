"""Auto: per schema, the combination of the members that labels held-out gold best, a member alone or the label
prior only when gold shows clearly that they do better.

Why combine by default: a hard choice of one candidate on a few dozen gold items is noisy (measured: the member
best on 50 gold items was 2-3 points below the best member on the other items; a learned combination of all of
them 0.3-1.4 points above it), and it drops every other vote. So `stacking` (a combination that learns from gold
how much each member and each block of look-alikes is worth) is the default once `min_gold` gold items exist,
`weighted` (no gold needed) before. Every candidate is scored by 5-fold cross-validation on the gold items, with
the posterior that serves answers (crossval.py: Stone, "Cross-validatory choice and assessment of statistical
predictions", JRSS-B 1974): each member alone (`member:<name>`), `majority`, `weighted`, `dawid_skene`, `stacking`
and `prior` (the gold labels' mix: the trivial answer). (`grouped_dawid_skene` is not among them: chosen on 50 gold
items it won where it was worse, measured 6-12 points below `stacking` on the other items of three sets.)

The rule (the one-standard-error kind, with two): find the best candidate on the user's metric (`accuracy` by
default) among `stacking`, `prior` and each member alone; `stacking` serves if it is within SE_RULE standard
errors of it (of their per-item paired difference), else the best itself. So a member alone or the label prior
serves only when gold shows clearly that it is better than the combination, and then the best of them: preferring
the prior to a better member (as an earlier rule did when both were near the best) served the trivial answer where
a member was better (measured on dev tweets, 50 gold, 10 draws: 2 draws served the prior, 3-4 points lost each;
0.645 before, 0.654 after, movie reviews equal). `majority`, `weighted` and `dawid_skene` are scored beside them
for reference (NEVER_CHOSEN says why). The winner is refitted on all gold; its parameters are published inside auto's,
with every candidate's score on every metric (`cv`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.aggregators.base import DEFAULT_SKILL, Aggregator, FitData, Params
from ensembles.aggregators.dawid_skene import DawidSkene
from ensembles.aggregators.majority import Majority
from ensembles.aggregators.prior import Prior
from ensembles.aggregators.stacking import Stacking
from ensembles.aggregators.weighted import Weighted
from ensembles.crossval import FOLDS, Dists, folds, item_weights, out_of_fold, paired_gain, scores
from ensembles.labels import pick
from ensembles.votes import Vote

MEMBER = "member:"
"""Prefix of a single-member candidate's name."""
OUT_OF_FOLD = "out_of_fold"
"""Key of auto's fit holding the winner's out-of-fold posterior per gold item: what the refit calibrates on
instead of posteriors on gold the fit saw, which look surer than they are. The refit removes it before publishing."""
SE_RULE = 2.0
"""A candidate within this many standard errors of the best is as good as the best (measured on the local pool's
dev items with 50 gold: one standard error switched away from `stacking` on noise and lost 0.4-1.2 points)."""
NEVER_CHOSEN = ("majority", "weighted", "dawid_skene")
"""Scored for reference but never chosen: chosen on 50 gold items they won on noise (measured: 1.2 points lost on
average on dev tweets, 13 and 5 points on one gold pool of intents and topics)."""

CANDIDATES: dict[str, type[Aggregator]] = {cls.name: cls for cls in (Stacking, Weighted, DawidSkene, Majority, Prior)}
"""What `auto` chooses among (besides each member alone); imported directly, so the registry can import `auto`."""


class Auto(Aggregator):
    name = "auto"
    uses_gold = True

    def __init__(self, candidates: Sequence[str] = tuple(CANDIDATES), folds: int = FOLDS, seed: int = 0,
                 min_coverage: float = 0.5) -> None:
        self.candidates = tuple(candidates)
        self.folds = folds
        self.seed = seed
        """Seeds the split of gold items into folds, so a refit on the same data chooses the same."""
        self.min_coverage = min_coverage
        """A member is a stand-alone candidate only if it answered at least this share of the gold items."""
        self._aggs: dict[str, Aggregator] = {n: CANDIDATES[n]() for n in {*self.candidates, "stacking", "weighted"}}

    def fit(self, data: FitData) -> dict[str, Any]:
        """`winner`, its `params`, every candidate's scores (`cv`), the `gold` count, `folds`, the `metric`, and the
        winner's out-of-fold posteriors (OUT_OF_FOLD, for the refit)."""
        items = data.gold_items
        if len(items) < data.min_gold:
            return {"winner": "weighted", "params": self._aggs["weighted"].fit(data), "cv": {}, "gold": len(items),
                    "folds": 0, "metric": data.metric}
        splits = folds(items, self.folds, self.seed)
        oof: dict[str, Dists] = {}
        oof["stacking"], default_fits = out_of_fold(self._aggs["stacking"], data, splits)
        for name in self.candidates:
            if name not in oof:
                oof[name], _ = out_of_fold(self._aggs[name], data, splits)
        for member in self.members(data):
            oof[MEMBER + member] = {i: self.candidate_posterior(MEMBER + member, data.votes[i], data.labels, fit)
                                    for fold, fit in zip(splits, default_fits) for i in fold}
        cv = {name: scores(dists, data.gold, data.labels) for name, dists in oof.items()}
        winner = self.choose(oof, data)
        inner = "stacking" if winner.startswith(MEMBER) else winner
        return {"winner": winner, "params": self._aggs[inner].fit(data), "cv": cv, "gold": len(items),
                "folds": len(splits), "metric": data.metric, OUT_OF_FOLD: oof[winner]}

    def members(self, data: FitData) -> list[str]:
        """Members that answered at least `min_coverage` of the gold items."""
        counts: dict[str, int] = {}
        for item in data.gold_items:
            for member in {v.member for v in data.votes[item]}:
                counts[member] = counts.get(member, 0) + 1
        return sorted(m for m, n in counts.items() if n >= self.min_coverage * len(data.gold_items))

    def choose(self, oof: Mapping[str, Dists], data: FitData) -> str:
        """The rule of the module docstring on the metric of `data`."""
        items = sorted(oof["stacking"])
        truths = [data.gold[i] for i in items]
        weights = item_weights(truths, data.metric)
        right = {name: [data.labels[pick(dists[i])] == t for i, t in zip(items, truths)] for name, dists in oof.items()}
        score = {name: scores(dists, data.gold, data.labels)[data.metric] for name, dists in oof.items()}

        best = max((n for n in oof if n not in NEVER_CHOSEN), key=score.__getitem__)
        gain, se = paired_gain(right[best], right["stacking"], weights)
        return "stacking" if gain <= SE_RULE * se else best

    def candidate_posterior(self, name: str, votes: Sequence[Vote], labels: Sequence[str],
                            params: Params | None) -> list[float]:
        """A candidate's posterior. A single member's is its own soft vote, or for a hard vote one-coin at its
        accuracy on gold (the default fit's `skills`; a one-hot would be a certainty no person could overrule);
        the default's when it did not answer."""
        if not name.startswith(MEMBER):
            return self._aggs[name].combine(votes, labels, params)
        member = name[len(MEMBER):]
        for vote in votes:
            if vote.member == member and vote.label is not None:
                obs = labels.index(vote.label)
                probs = vote.probs
                if probs is not None and len(probs) == len(labels) and pick(probs) == obs:
                    return list(probs)
                skill = min(float((params or {}).get("skills", {}).get(member, DEFAULT_SKILL)), 1 - 1e-3)
                return [skill if i == obs else (1 - skill) / (len(labels) - 1) for i in range(len(labels))]
        return self._aggs["stacking"].combine(votes, labels, params)

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        if not params or "winner" not in params:
            return self._aggs["weighted"].combine(votes, labels, None)
        return self.candidate_posterior(params["winner"], votes, labels, params["params"])

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """The winner's; a single-member winner ranks members by their own cross-validated accuracy."""
        if not params or "winner" not in params:
            return {}
        winner = params["winner"]
        if winner.startswith(MEMBER):
            return {name[len(MEMBER):]: s["accuracy"] for name, s in params["cv"].items() if name.startswith(MEMBER)}
        return self._aggs[winner].accuracies(params["params"], labels)
