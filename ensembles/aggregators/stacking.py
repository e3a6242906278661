"""Stacking: a regularised multinomial logistic regression over the members' soft votes, fitted on gold.

Why: members built from one model or one prompt share their errors; aggregators that assume
independent members (majority, Dawid-Skene) count one shared mistake several times. Stacked
generalisation (Wolpert, "Stacked Generalization", Neural Networks 1992; with a logistic-regression
combiner as in Ting & Witten, "Issues in Stacked Generalization", JAIR 1999) learns the weights from
gold instead: a block of members that always agree carries one signal, and under the L2 penalty the
block's weight is split among its copies, so the block counts roughly once.

Model: logit[k] = b[k] + sum over members m of (sum_l W[m][k][l] * x[m][l] + a[m][k] * abstain[m]),
x[m] = the member's (tempered) probability vector when the vote has one, one-hot otherwise, zeros
when it abstained; P(true = k | votes) = softmax(logit). Fitted with scikit-learn's
LogisticRegression (L2, strength 1/C) in the refit; the request path evaluates the published
coefficients in pure Python. Members the fit did not see are ignored; without a fit (fewer than
`min_gold` gold items, or a single class among them) the posterior is `weighted`'s default.

Human annotators (`human:<name>`) each label a few items: one column per person could not be fitted,
so they share one pooled column, `human:*`, whose features count the human votes an item got.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import MIN_GOLD, Aggregator, ItemVotes, Params, Triple, softmax, votes_of
from ensembles.aggregators.confusion import shrink_skills
from ensembles.aggregators.weighted import Weighted
from ensembles.temperature import soft
from ensembles.votes import HUMAN_PREFIX, Vote

HUMANS = HUMAN_PREFIX + "*"
"""The one column every human annotator's votes share."""


def column(member: str) -> str:
    return HUMANS if member.startswith(HUMAN_PREFIX) else member


class _Compiled:
    """Coefficients in one label order: the all-abstain logits, and per member adj[t][l] = W[m][t][l] - a[m][t]."""

    def __init__(self, params: Params, labels: Sequence[str]) -> None:
        coef, abstain = params["coef"], params["abstain"]
        self.base = [float(params["intercept"][t]) + sum(float(abstain[m][t]) for m in abstain) for t in labels]
        self.adj = {m: [[float(by_true[t][o]) - float(abstain[m][t]) for o in labels] for t in labels]
                    for m, by_true in coef.items()}
        self.temperatures: Mapping[str, float] = params.get("temperatures") or {}


class Stacking(Aggregator):
    name = "stacking"
    soft_fit = True
    uses_gold = True

    def __init__(self, C: float = 1.0) -> None:
        self.C = C
        """Inverse L2 strength (scikit-learn's C): smaller shrinks every weight harder toward 0."""
        self._fallback = Weighted()
        self._cache: dict[tuple[int, tuple[str, ...]], tuple[Params, _Compiled]] = {}

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None, *,
            item_votes: ItemVotes | None = None, min_gold: int = MIN_GOLD) -> Params | None:
        """Coefficients per member (`coef[m][true][observed]`, `abstain[m][true]`), `intercept`, and each
        member's gold accuracy as `skills` (routers rank by it); None when there is too little gold."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        item_votes = item_votes if item_votes is not None else votes_of(votes)
        gold = gold or {}
        items = sorted(i for i, g in gold.items() if g in labels and i in item_votes)
        if len(items) < min_gold or len({gold[i] for i in items}) < 2:
            return None
        members = sorted({column(v.member) for i in items for v in item_votes[i] if v.label is not None})
        k = len(labels)
        x = np.asarray([features(item_votes[i], members, labels) for i in items])
        y = np.asarray([labels.index(gold[i]) for i in items])
        model = LogisticRegression(C=self.C, max_iter=2000, class_weight="balanced").fit(x, y)
        weights = np.zeros((k, x.shape[1]))
        intercept = np.full(k, float(model.intercept_.min()) - np.log(len(items)))  # classes no gold item had
        rows = model.coef_ if len(model.classes_) > 2 else np.vstack([np.zeros_like(model.coef_), model.coef_])
        bias = model.intercept_ if len(model.classes_) > 2 else np.array([0.0, model.intercept_[0]])
        for row, cls in enumerate(model.classes_):
            weights[cls], intercept[cls] = rows[row], bias[row]
        width = k + 1
        coef = {m: {labels[t]: {labels[o]: float(weights[t, j * width + o]) for o in range(k)} for t in range(k)}
                for j, m in enumerate(members)}
        abstain = {m: {labels[t]: float(weights[t, j * width + k]) for t in range(k)} for j, m in enumerate(members)}
        return {"coef": coef, "abstain": abstain, "intercept": {labels[t]: float(intercept[t]) for t in range(k)},
                "skills": gold_skills(item_votes, items, gold)}

    def compiled(self, params: Params, labels: Sequence[str]) -> _Compiled:
        key = (id(params), tuple(labels))
        hit = self._cache.get(key)
        if hit is not None and hit[0] is params:
            return hit[1]
        compiled = _Compiled(params, labels)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = (params, compiled)
        return compiled

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        if not params or "coef" not in params:
            return self._fallback.posterior(votes, labels, None)
        c = self.compiled(params, labels)
        k = len(labels)
        index = {label: i for i, label in enumerate(labels)}
        scores = list(c.base)
        mul = operator.mul
        seen: set[str] = set()
        for vote in votes:
            adj = c.adj.get(column(vote.member))
            if vote.label is None or adj is None or vote.member in seen:
                continue
            seen.add(vote.member)
            probs = soft(vote, k, c.temperatures)
            if probs is None:
                obs = index[vote.label]
                for t in range(k):
                    scores[t] += adj[t][obs]
            else:
                for t in range(k):
                    scores[t] += sum(map(mul, probs, adj[t]))
        return softmax(scores)

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        return dict((params or {}).get("skills", {}))


def features(votes: Sequence[Vote], members: Sequence[str], labels: Sequence[str]) -> list[float]:
    """Per column: the member's probability per label (one-hot for a hard vote; the pooled human column sums
    its people's votes), then 1 if no vote came; a member's first vote counts."""
    k = len(labels)
    mass: dict[str, list[float]] = {}
    seen: set[str] = set()
    for vote in votes:
        if vote.label is None or vote.member in seen:
            continue
        seen.add(vote.member)
        probs = soft(vote, k, None)
        row = list(probs) if probs is not None else [float(label == vote.label) for label in labels]
        total = mass.setdefault(column(vote.member), [0.0] * k)
        for i, p in enumerate(row):
            total[i] += p
    out: list[float] = []
    for m in members:
        out.extend(mass.get(m, [0.0] * k))
        out.append(0.0 if m in mass else 1.0)
    return out


def gold_skills(item_votes: ItemVotes, items: Sequence[str], gold: Mapping[str, str]) -> dict[str, float]:
    """Each member's hard accuracy on the gold items it answered, shrunk (humans toward their pool)."""
    right: dict[str, int] = {}
    answered: dict[str, int] = {}
    for item in items:
        seen: set[str] = set()
        for vote in item_votes[item]:
            if vote.label is None or vote.member in seen:
                continue
            seen.add(vote.member)
            answered[vote.member] = answered.get(vote.member, 0) + 1
            right[vote.member] = right.get(vote.member, 0) + (vote.label == gold[item])
    skills, _ = shrink_skills({m: right[m] / n for m, n in answered.items()}, answered)
    return skills

