"""Weighted soft voting: a linear pool of each member's (soft) vote, weighted by its log-odds of being right.

A member that returned token log-probabilities contributes its soft vote; the others a one-hot
vote. Weights are log((K-1) s / (1-s)) of the member's one-coin accuracy s (the optimal weighted
vote under the one-coin model), fitted by one-coin EM on soft and hard votes (soft_em.py); members
no better than chance weigh nothing. Before any fit every member weighs the same. Skills are shrunk
toward DEFAULT_SKILL (confusion.shrink_skills).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ensembles.aggregators.base import DEFAULT_SKILL, FitData, Params
from ensembles.aggregators.confusion import shrink_skills, vote_counts
from ensembles.aggregators.one_coin import OneCoin
from ensembles.aggregators.skill_weighted import SkillWeighted
from ensembles.odds import log_odds


class Weighted(SkillWeighted):
    name = "weighted"
    key = "weights"

    def default_weight(self, k: int) -> float:
        return log_odds(DEFAULT_SKILL, k)

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """The one-coin accuracy behind each log-odds weight: s = e^w / (K - 1 + e^w)."""
        k = len(labels)
        return {m: math.exp(w) / (k - 1 + math.exp(w)) for m, w in (params or {}).get("weights", {}).items()}

    def fit(self, data: FitData) -> Params:
        """One-coin skills, shrunk, as log-odds weights."""
        skills = OneCoin().fit(data)["skills"]
        return {"weights": {m: log_odds(s, len(data.labels)) for m, s in shrink_skills(skills, vote_counts(data)).items()}}
