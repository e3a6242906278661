"""Auto: per schema, the aggregator (or the single member) that labels the gold items best under k-fold cross-validation.

Why: which aggregator wins depends on the pool. With look-alike members a vote can lose to its best
member (measured: DESIGN.md), with independent ones it beats it; only held-out gold can tell.
Candidates: each member alone (`member:<name>`: its own vote is the label), and the `candidates`
aggregators. Every candidate is fitted on all votes plus the training folds' gold and scored on the
held-out fold's gold items, as the request path would label them (model selection by
cross-validation: Stone, "Cross-validatory choice and assessment of statistical predictions",
JRSS-B 1974).

Rule (one standard error, paired, on balanced accuracy: every label weighs the same, so a skewed gold set
does not reward a model that always says its majority label): `weighted`, what the gateway does without
gold, is the default; a member alone or another aggregator replaces it only if its cross-validated
accuracy exceeds the default's by more than one standard error of their per-item paired difference;
among those, the most accurate wins, earlier candidates on ties. So a choice must earn its place on gold: on a few dozen
gold items of seven labels the member that looks best is often not (measured on intents with 50 gold:
the best-looking member was 9 points below the best one on the test items, `weighted` 6 above it).
With fewer than `min_gold` gold items it falls back to `weighted`. The winner is refitted on all
data; its parameters are published inside auto's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.aggregators.base import (MIN_GOLD, OUT_OF_FOLD, Aggregator, ItemVotes, Params, Triple,
                                        debiased_votes, fit_tempered, pick, publishable, votes_of)
from ensembles.aggregators.dawid_skene import DawidSkene
from ensembles.aggregators.glad import Glad
from ensembles.aggregators.majority import Majority
from ensembles.aggregators.stacking import Stacking
from ensembles.aggregators.weighted import Weighted
from ensembles.temperature import fit_temperatures, soft, temper_votes
from ensembles.votes import Vote

MEMBER = "member:"
"""Prefix of a single-member candidate's name."""


CANDIDATES: dict[str, type[Aggregator]] = {cls.name: cls for cls in (Majority, Weighted, DawidSkene, Glad, Stacking)}
"""What `auto` chooses among (besides each member alone); imported directly, so the registry can import `auto`."""


class Auto(Aggregator):
    name = "auto"
    soft_fit = True
    uses_gold = True

    def __init__(self, candidates: Sequence[str] = ("majority", "weighted", "dawid_skene", "glad", "stacking"),
                 folds: int = 5, seed: int = 0, min_coverage: float = 0.5) -> None:
        self.candidates = tuple(candidates)
        self.folds = folds
        self.seed = seed
        """Seeds the split of gold items into folds, so a refit on the same data chooses the same."""
        self.min_coverage = min_coverage
        """A member is a stand-alone candidate only if it answered at least this share of the gold items."""
        self._aggs: dict[str, Aggregator] = {n: CANDIDATES[n]() for n in {*self.candidates, "weighted"}}

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None) -> Params:
        """Auto's parameters from hard triples alone (refit calls fit_params with the soft votes)."""
        return self.fit_params(votes, labels, gold or {}, votes_of(votes))

    def fit_params(self, triples: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str],
                   item_votes: ItemVotes, min_gold: int = MIN_GOLD, debiased: bool = True) -> dict[str, Any]:
        """`winner`, its `params`, every candidate's `cv_accuracy`, the `gold` count and `folds` used, and the
        member `biases` every candidate saw the votes through (so the winner's own params carry none)."""
        biases, triples, item_votes = debiased_votes(triples, labels, item_votes, gold, debiased)
        chosen = self._choose(triples, labels, gold, item_votes, min_gold)
        return {**chosen, "biases": biases} if biases else chosen

    def _choose(self, triples: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str],
                item_votes: ItemVotes, min_gold: int) -> dict[str, Any]:
        items = sorted(i for i, g in gold.items() if g in labels and item_votes.get(i))
        memo: dict[tuple[Any, ...], Params | None] = {}
        if len(items) < min_gold:
            return {"winner": "weighted", "params": self._fit("weighted", triples, labels, gold, item_votes, min_gold, memo),
                    "cv_accuracy": {}, "gold": len(items), "folds": 0}
        members = [m for m, n in answered(item_votes, items).items() if n >= self.min_coverage * len(items)]
        order = list(items)
        random.Random(self.seed).shuffle(order)
        k = min(self.folds, len(order))
        correct: dict[str, list[bool]] = {name: [] for name in [*(MEMBER + m for m in members), *self.candidates]}
        confidence: dict[str, list[float]] = {name: [] for name in correct}
        truths: list[str] = []
        for f in range(k):
            held = set(order[f::k])
            train = {i: g for i, g in gold.items() if i not in held}
            fitted = {name: self._fit(name, triples, labels, train, item_votes, min_gold, memo)
                      for name in {*self.candidates, "weighted"}}
            for item in order[f::k]:
                votes, truth = item_votes[item], gold[item]
                truths.append(truth)
                for name in correct:
                    inner = fitted["weighted"] if name.startswith(MEMBER) else fitted[name]
                    dist = self.candidate_posterior(name, votes, labels, inner)
                    best = pick(dist)
                    correct[name].append(labels[best] == truth)
                    confidence[name].append(dist[best])
        weights = balanced_weights(truths)
        accuracy = {name: sum(w * c for w, c in zip(weights, cs)) / len(cs) for name, cs in correct.items()}
        winner = choose(correct, [MEMBER + m for m in members], list(self.candidates), weights)
        inner_name = "weighted" if winner.startswith(MEMBER) else winner
        return {"winner": winner, "params": self._fit(inner_name, triples, labels, gold, item_votes, min_gold, memo),
                "cv_accuracy": accuracy, "gold": len(items), "folds": k,
                OUT_OF_FOLD: {"confidence": confidence[winner], "correct": correct[winner]}}

    def _fit(self, name: str, triples: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str],
             item_votes: ItemVotes, min_gold: int, memo: dict[tuple[Any, ...], Params | None]) -> dict[str, Any]:
        """`name`'s published parameters on this gold; the fit itself is reused when its inputs did not change
        (a fit that ignores gold and soft votes, like GLAD's, runs once for all folds)."""
        agg = self._aggs[name]
        temperatures = fit_temperatures(item_votes, labels, gold, min_gold)
        key = (name, frozenset(gold.items()) if agg.uses_gold else None,
               frozenset(temperatures.items()) if agg.soft_fit else None)
        if key not in memo:
            memo[key] = fit_tempered(agg, triples, labels, gold, temper_votes(item_votes, temperatures), min_gold)
        return publishable(memo[key], triples, temperatures)

    def candidate_posterior(self, name: str, votes: Sequence[Vote], labels: Sequence[str],
                            params: Params | None) -> list[float]:
        """A candidate's posterior; a single member's is its own (tempered) vote, or `weighted` if it did not answer."""
        if not name.startswith(MEMBER):
            return self._aggs[name].posterior(votes, labels, params)
        member = name[len(MEMBER):]
        for vote in votes:
            if vote.member == member and vote.label is not None:
                obs = labels.index(vote.label)
                probs = soft(vote, len(labels), (params or {}).get("temperatures"))
                if probs is not None and pick(probs) == obs:
                    return list(probs)
                return [float(i == obs) for i in range(len(labels))]
        return self._aggs["weighted"].posterior(votes, labels, params)

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        if not params or "winner" not in params:
            return self._aggs["weighted"].posterior(votes, labels, None)
        return self.candidate_posterior(params["winner"], votes, labels, params["params"])

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """The winner's; a single-member winner ranks members by their own cross-validated accuracy."""
        if not params or "winner" not in params:
            return {}
        winner = params["winner"]
        if winner.startswith(MEMBER):
            return {name[len(MEMBER):]: acc for name, acc in params["cv_accuracy"].items() if name.startswith(MEMBER)}
        return self._aggs[winner].accuracies(params["params"], labels)


def answered(item_votes: ItemVotes, items: Sequence[str]) -> dict[str, int]:
    """Gold items each member gave a valid vote on."""
    out: dict[str, int] = {}
    for item in items:
        for member in {v.member for v in item_votes[item] if v.label is not None}:
            out[member] = out.get(member, 0) + 1
    return dict(sorted(out.items()))


def balanced_weights(truths: Sequence[str]) -> list[float]:
    """Per gold item, n / (labels present x items of its label): each label weighs the same in the score.

    Why: a gold set that is 60% one label rewards a model that says that label every time; a few dozen gold
    items are often that skewed (measured: 31 of 50 tweets negative, against 48% in the test items).
    """
    counts: dict[str, int] = {}
    for truth in truths:
        counts[truth] = counts.get(truth, 0) + 1
    return [len(truths) / (len(counts) * counts[t]) for t in truths]


def choose(correct: Mapping[str, Sequence[bool]], members: Sequence[str], combinations: Sequence[str],
           weights: Sequence[float] | None = None, default: str = "weighted") -> str:
    """The one-standard-error rule of the module docstring, on per-item correctness aligned across candidates,
    each item weighted (balanced accuracy by default weights of 1)."""
    w = list(weights) if weights is not None else [1.0] * len(correct[default])

    def acc(name: str) -> float:
        return sum(x * c for x, c in zip(w, correct[name])) / len(correct[name])

    base = correct[default]
    better = []
    for name in [*members, *(c for c in combinations if c != default)]:
        diff = [x * (float(a) - float(b)) for x, a, b in zip(w, correct[name], base)]
        n = len(diff)
        mean = sum(diff) / n
        se = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1) / n) if n > 1 else math.inf
        if mean > se:
            better.append(name)
    return max(better, key=acc) if better else default
