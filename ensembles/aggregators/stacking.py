"""Stacking: a regularised multinomial logistic regression over the members' log-probabilities, fitted on gold,
that knows which members are look-alikes.

Why: members built from one model or one prompt share their errors; aggregators that assume independent
members (majority, Dawid-Skene) count one shared mistake several times. Stacked generalisation (Wolpert,
"Stacked Generalization", Neural Networks 1992; a logistic-regression combiner as in Ting & Witten, "Issues in
Stacked Generalization", JAIR 1999) learns the weights from gold instead.

Features per item, for each member m: z_m = log p_m - mean(log p_m) over the labels (p_m its soft vote floored
at EPS, or a one-coin smoothed one-hot for a hard vote; zeros when it abstained); and for each look-alike group g
(members serving one model, FitData.groups) the mean z of its members that voted. Model: logit[t] = b[t] +
sum over groups g of W_g[t] . zbar_g + sum over members m of W_m[t] . z_m; P(true = t | votes) = softmax. Under
the L2 penalty a block's weight is split among its copies, so a block of look-alikes counts about once; the
group's mean is a less noisy copy of what its members share (measured on the dev items of the local pool's sets,
50 gold: +0.5 to +2 points over the same regression without the group features on 7 intents, equal on the
others). Log-probabilities rather than probabilities: a vote of 0.99 against 0.9 is a real difference in evidence
(measured +1 to +4 points).

Each block's weights are W_j = a_j I + D_j: an agreement weight a_j (a weighted vote) plus a full confusion
correction D_j penalised harder, its strength chosen by cross-validation on gold (a hierarchical prior: with 60
gold items of 4 labels and hard votes the full matrices overfit, measured 0.80 against 0.82 for this model and 0.84
for the best member; on the local pool's soft votes both are within half a point). The agreement weights are shrunk
toward one shared weight on the groups and the members outside any group, a log-linear pool that counts each
look-alike group once, rather than toward 0; the intercepts toward 0, since the votes are debiased toward the
labels' mix already (on one gold pool of 50 movie reviews the unshrunk fit put 2.5 logits on the gold's majority
label and lost 6 points; measured on dev items). The class weighting follows the
user's metric: none for `accuracy`, balanced for `balanced_accuracy` and `macro_f1`. Fitted by L-BFGS (scipy) in
the refit; the request path evaluates the published W_j in pure Python. Members the fit did not see are ignored;
without a fit (fewer than `min_gold` gold items, or a single class among them) the posterior is `weighted`'s
default.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.aggregators.base import DEFAULT_SKILL, Aggregator, FitData, ItemVotes, Params, softmax
from ensembles.aggregators.confusion import shrink_skills
from ensembles.aggregators.weighted import Weighted
from ensembles.votes import Vote

EPS = 0.05
"""Floor of a soft vote's probabilities: a tiny model's 0.999 is not a thousand times the evidence of its 0.95
(measured on the dev items with the bench's gold pool: 0.05 over 0.01, +1.6 points on 7 intents, +0.4 on movie
reviews, equal elsewhere; 0.01 over 0.001, +3 points on 7 intents)."""

AGREEMENT_PENALTY = 1.0
"""L2 strength on each block's agreement weight a_j (how much its vote counts for the label it favours)."""
INTERCEPT_PENALTY = 1.0
"""L2 strength on the intercepts: the members' votes are debiased toward the labels' mix already, and on a few dozen
gold items that the votes separate perfectly a free intercept drifts anywhere in the margin (measured: 2.5 logits
toward the gold's majority label, 6 points lost on movie reviews)."""
SHARED_PENALTY = 0.01
"""L2 strength on the shared agreement weight: the crowd's own scale, learned freely."""
DEVIATION_GRID = (1.0, 5.0, 25.0)
"""L2 strengths tried on the blocks' full confusion weights D_j, chosen by 3-fold cross-validated log-loss on gold:
strong where gold is scarce and the votes are hard (a weighted vote), weak where members have confusions worth
learning (7 intents)."""

Block = dict[str, dict[str, float]]
"""Coefficients of one member or group: block[true label][observed label]."""


def centred_logs(vote: Vote, k: int, index: Mapping[str, int]) -> list[float]:
    """z of the module docstring for one valid vote."""
    probs = vote.probs
    if probs is None or len(probs) != k:
        off = (1.0 - DEFAULT_SKILL) / (k - 1)
        obs = index[vote.label]  # type: ignore[index]
        probs = [DEFAULT_SKILL if i == obs else off for i in range(k)]
    logs = [math.log(max(p, EPS)) for p in probs]
    mean = sum(logs) / k
    return [x - mean for x in logs]


class _Compiled:
    """Coefficients in one label order: intercepts, and per member and per group W[t][o]."""

    def __init__(self, params: Params, labels: Sequence[str]) -> None:
        self.base = [float(params["intercept"][t]) for t in labels]
        self.members = {m: _matrix(b, labels) for m, b in params["members"].items()}
        self.groups = {g: _matrix(b, labels) for g, b in params.get("groups", {}).items()}
        self.group_of: Mapping[str, str] = params.get("group_of", {})


def _matrix(block: Block, labels: Sequence[str]) -> list[list[float]]:
    return [[float(block[t][o]) for o in labels] for t in labels]


class Stacking(Aggregator):
    name = "stacking"
    uses_gold = True

    def __init__(self, C: float = 1.0) -> None:
        self.C = C
        """Inverse L2 strength (scikit-learn's C): smaller shrinks every weight harder toward 0."""
        self._fallback = Weighted()
        self._cache: dict[tuple[int, tuple[str, ...]], tuple[Params, _Compiled]] = {}

    def fit(self, data: FitData) -> Params | None:
        """Coefficients per member and look-alike group, intercepts, and each member's gold accuracy as `skills`
        (routers rank by it); None when there is too little gold."""
        import numpy as np

        labels, items = data.labels, data.gold_items
        if len(items) < data.min_gold or len({data.gold[i] for i in items}) < 2:
            return None
        members = sorted({v.member for i in items for v in data.votes[i]})
        group_of = {m: data.groups[m] for m in members if m in data.groups}
        groups = sorted(g for g in set(group_of.values()) if sum(x == g for x in group_of.values()) >= 2)
        group_of = {m: g for m, g in group_of.items() if g in groups}
        k = len(labels)
        x = np.asarray([features(data.votes[i], groups, members, group_of, labels) for i in items])
        x = x.reshape(len(items), len(groups) + len(members), k)
        y = np.asarray([labels.index(data.gold[i]) for i in items])
        weights = class_weights(y, k, data.metric)
        centre = np.asarray([1.0] * len(groups) + [0.0 if m in group_of else 1.0 for m in members])
        strength = min(DEVIATION_GRID, key=lambda lam: held_out_loss(x, y, weights, k, lam, centre))
        w, intercept = fit_pooled_regression(x, y, weights, k, strength, centre)

        def block(j: int) -> Block:
            return {labels[t]: {labels[o]: float(w[j, t, o]) for o in range(k)} for t in range(k)}

        return {"groups": {g: block(j) for j, g in enumerate(groups)},
                "members": {m: block(len(groups) + j) for j, m in enumerate(members)}, "group_of": group_of,
                "intercept": {labels[t]: float(intercept[t]) for t in range(k)}, "deviation_strength": strength,
                "skills": gold_skills(data.votes, items, data.gold)}

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
        if not params or "members" not in params:
            return self._fallback.combine(votes, labels, None)
        c = self.compiled(params, labels)
        k = len(labels)
        index = {label: i for i, label in enumerate(labels)}
        scores = list(c.base)
        mul = operator.mul
        sums: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        seen: set[str] = set()
        for vote in votes:
            w = c.members.get(vote.member)
            if vote.label is None or w is None or vote.member in seen:
                continue
            seen.add(vote.member)
            z = centred_logs(vote, k, index)
            for t in range(k):
                scores[t] += sum(map(mul, z, w[t]))
            if (g := c.group_of.get(vote.member)) is not None:
                total = sums.setdefault(g, [0.0] * k)
                for o in range(k):
                    total[o] += z[o]
                counts[g] = counts.get(g, 0) + 1
        for g, total in sums.items():
            w, n = c.groups[g], counts[g]
            for t in range(k):
                scores[t] += sum(map(mul, total, w[t])) / n
        return softmax(scores)

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        return dict((params or {}).get("skills", {}))


def class_weights(y: Any, k: int, metric: str) -> Any:
    """Each gold item's weight in the loss: 1 for accuracy; for the balanced metrics, n / (classes present x items
    of its class), so that every class weighs the same (scikit-learn's "balanced")."""
    import numpy as np

    if metric == "accuracy":
        return np.ones(len(y))
    counts = np.bincount(y, minlength=k)
    return len(y) / ((counts > 0).sum() * counts[y])


def fit_pooled_regression(x: Any, y: Any, weights: Any, k: int, deviation: float, centre: Any) -> tuple[Any, Any]:
    """(W of shape (blocks, k, k), intercepts) minimising the weighted log-loss of softmax(b + sum_j W_j z_j) plus
    AGREEMENT_PENALTY/2 * sum_j e_j^2 + deviation/2 * |D|^2 + small penalties on s and b, with W_j = a_j I + D_j and
    a_j = s * centre_j + e_j: the agreement weights are shrunk toward one shared weight s on the `centre` blocks (a
    log-linear pool that counts each look-alike group once), not toward 0 (L-BFGS, scipy)."""
    import numpy as np
    from scipy.optimize import minimize

    n, blocks, _ = x.shape
    onehot = np.eye(k)[y]

    def loss(theta: Any) -> tuple[float, Any]:
        shared, e, d, b = theta[0], theta[1:blocks + 1], theta[blocks + 1:-k].reshape(blocks, k, k), theta[-k:]
        a = shared * centre + e
        logits = b + np.einsum("njk,j->nk", x, a) + np.einsum("njo,jto->nt", x, d)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        value = -(weights * np.log(np.maximum((p * onehot).sum(axis=1), 1e-300))).sum()
        g = (p - onehot) * weights[:, None]
        grad_a = np.einsum("nk,njk->j", g, x)
        grad_d = np.einsum("nt,njo->jto", g, x) + deviation * d
        grad_b = g.sum(axis=0) + INTERCEPT_PENALTY * b
        value += (AGREEMENT_PENALTY / 2 * e @ e + deviation / 2 * (d * d).sum() + INTERCEPT_PENALTY / 2 * b @ b
                  + SHARED_PENALTY / 2 * shared ** 2)
        return value, np.concatenate([[grad_a @ centre + SHARED_PENALTY * shared], grad_a + AGREEMENT_PENALTY * e,
                                      grad_d.ravel(), grad_b])

    theta = minimize(loss, np.zeros(1 + blocks + blocks * k * k + k), jac=True, method="L-BFGS-B").x
    shared, e, d, b = theta[0], theta[1:blocks + 1], theta[blocks + 1:-k].reshape(blocks, k, k), theta[-k:]
    return (shared * centre + e)[:, None, None] * np.eye(k)[None] + d, b


def held_out_loss(x: Any, y: Any, weights: Any, k: int, deviation: float, centre: Any, folds: int = 3) -> float:
    """The weighted log-loss of `fit_pooled_regression` on each of `folds` folds while it was held out."""
    import numpy as np

    order = np.random.RandomState(0).permutation(len(y))
    total = 0.0
    for f in range(folds):
        held = order[f::folds]
        train = np.setdiff1d(order, held)
        w, b = fit_pooled_regression(x[train], y[train], weights[train], k, deviation, centre)
        logits = b + np.einsum("njo,jto->nt", x[held], w)
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float((weights[held] * log_p[np.arange(len(held)), y[held]]).sum())
    return total


def features(votes: Sequence[Vote], groups: Sequence[str], members: Sequence[str], group_of: Mapping[str, str],
             labels: Sequence[str]) -> list[float]:
    """The regression's row for one item: each group's mean z, then each member's z (a member's first vote counts;
    zeros where no vote came)."""
    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    z: dict[str, list[float]] = {}
    for vote in votes:
        if vote.label is not None and vote.member not in z:
            z[vote.member] = centred_logs(vote, k, index)
    out: list[float] = []
    for g in groups:
        mine = [z[m] for m in z if group_of.get(m) == g]
        out.extend([sum(col) / len(mine) for col in zip(*mine)] if mine else [0.0] * k)
    for m in members:
        out.extend(z.get(m, [0.0] * k))
    return out


def gold_skills(item_votes: ItemVotes, items: Sequence[str], gold: Mapping[str, str]) -> dict[str, float]:
    """Each member's hard accuracy on the gold items it answered, shrunk toward the default."""
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
    return shrink_skills({m: right[m] / n for m, n in answered.items()}, answered)
