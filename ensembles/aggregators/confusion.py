"""Posterior under a per-member confusion model: the shared core of Dawid-Skene, one-coin, GLAD, MACE.

P(true = k | votes) is proportional to prior[k] * prod over votes of P(vote | true = k), computed
in log space. A soft vote (a distribution p over labels from log-probabilities) contributes
log(sum_l p[l] * P(l | k)), its expected likelihood. Each subclass only says how to read its
fitted parameters into a prior and a confusion matrix per member; matrices are compiled once per
parameter set and label order, so the request path is a few list operations per vote.

Small data: each fitted matrix is shrunk toward the DEFAULT_SKILL one-coin matrix. People's votes never
reach these aggregators: they join after them (ensembles/humans.py).
"""

from __future__ import annotations

import math
import operator
from abc import abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import DEFAULT_SKILL, Aggregator, FitData, Params, softmax
from ensembles.votes import Vote

Matrix = list[list[float]]
"""conf[k][l] = P(member answers labels[l] | true label is labels[k])."""

_FLOOR = 1e-6
PSEUDO_VOTES = 10.0
"""Strength of the prior each fitted matrix is shrunk toward: as if every member had also answered this
many items at DEFAULT_SKILL. On a few dozen items EM reports members that never erred as exactly
right (and unseen confusions as impossible, so one odd vote vetoes the truth); on thousands the
shrinkage vanishes."""


def shrink(matrix: Matrix, rows: Sequence[float], toward: Matrix) -> Matrix:
    """Each row t mixed with `toward`'s row t, weighted by the member's (expected) votes on class t, `rows[t]`."""
    return [[(n * p + PSEUDO_VOTES * d) / (n + PSEUDO_VOTES) for p, d in zip(row, toward[t])]
            for t, (row, n) in enumerate(zip(matrix, rows))]


def shrink_skills(skills: Mapping[str, float], counts: Mapping[str, float]) -> dict[str, float]:
    """One-coin skills shrunk like matrices, toward DEFAULT_SKILL by each member's number of votes."""
    return {m: (float(counts.get(m, 0)) * s + PSEUDO_VOTES * DEFAULT_SKILL) / (float(counts.get(m, 0)) + PSEUDO_VOTES)
            for m, s in skills.items()}


def vote_counts(data: FitData) -> dict[str, int]:
    """Valid votes per member: what each member's matrix is shrunk by (`votes_per_member`)."""
    return dict(Counter(member for _, member, _ in data.triples))


def one_coin(skill: float, k: int) -> Matrix:
    """Right with probability `skill`, otherwise uniformly wrong."""
    skill = min(max(skill, _FLOOR), 1 - _FLOOR)
    off = (1 - skill) / (k - 1)
    return [[skill if i == j else off for j in range(k)] for i in range(k)]


class Compiled:
    """Parameters read once for one label order: log prior, per member its matrix and log matrix, the default
    matrix for members the fit did not see."""

    def __init__(self, log_prior: list[float], matrices: dict[str, Matrix], k: int) -> None:
        self.log_prior = log_prior
        self.matrices = matrices
        self.logs = {m: _logs(mat) for m, mat in matrices.items()}
        self.default = one_coin(DEFAULT_SKILL, k)
        self.default_log = _logs(self.default)


def _logs(matrix: Matrix) -> Matrix:
    return [[math.log(max(p, _FLOOR)) for p in row] for row in matrix]


class ConfusionAggregator(Aggregator):
    def __init__(self) -> None:
        self._cache: dict[tuple[int, tuple[str, ...]], tuple[Params | None, Compiled]] = {}

    @abstractmethod
    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        """Each fitted member's confusion matrix in `labels` order."""

    def row_votes(self, params: Params, labels: Sequence[str], prior: Sequence[float]) -> dict[str, list[float]]:
        """Each member's (expected) votes per true class, what its rows are shrunk by: its votes spread by the prior
        unless the fit published better."""
        return {m: [float(n) * p for p in prior] for m, n in params.get("votes_per_member", {}).items()}

    def prior(self, params: Params | None, labels: Sequence[str]) -> list[float]:
        prior = (params or {}).get("prior") or {}
        values = [float(prior.get(label, 0.0)) for label in labels]
        if sum(values) <= 0:
            return [1.0 / len(labels)] * len(labels)
        return values

    def compiled(self, params: Params | None, labels: Sequence[str]) -> Compiled:
        key = (id(params), tuple(labels))
        hit = self._cache.get(key)
        if hit is not None and hit[0] is params:
            return hit[1]
        mats = self.matrices(params, labels) if params else {}
        prior = self.prior(params, labels)
        if params and "votes_per_member" in params:
            rows = self.row_votes(params, labels, prior)
            default = one_coin(DEFAULT_SKILL, len(labels))
            mats = {m: shrink(mat, rows.get(m, [0.0] * len(labels)), default) for m, mat in mats.items()}
        compiled = Compiled([math.log(max(p, _FLOOR)) for p in prior], mats, len(labels))
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = (params, compiled)
        return compiled

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """Prior-weighted diagonal of each confusion matrix."""
        if not params:
            return {}
        c = self.compiled(params, labels)
        prior = softmax(list(c.log_prior))
        return {m: sum(p * mat[k][k] for k, p in enumerate(prior)) for m, mat in c.matrices.items()}

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        c = self.compiled(params, labels)
        k = len(labels)
        index = {label: i for i, label in enumerate(labels)}
        scores = list(c.log_prior)
        log, mul = math.log, operator.mul
        for vote in votes:
            if vote.label is None:
                continue
            probs = vote.probs
            if probs is not None and len(probs) == k:
                mat = c.matrices.get(vote.member) or c.default
                for t in range(k):
                    scores[t] += log(max(sum(map(mul, probs, mat[t])), _FLOOR))
            else:
                logs = c.logs.get(vote.member) or c.default_log
                obs = index[vote.label]
                for t in range(k):
                    scores[t] += logs[t][obs]
        return softmax(scores)
