"""Weighted soft voting: a linear pool of each member's (soft) vote, weighted by its log-odds of being right.

A member that returned token log-probabilities contributes its soft vote; the others a one-hot
vote. Weights are log((K-1) s / (1-s)) of the member's one-coin accuracy s (the optimal weighted
vote under the one-coin model), fitted by one-coin EM on soft and hard votes (soft_em.py); members
no better than chance weigh nothing. Before any fit every member weighs the same. Skills are shrunk
toward DEFAULT_SKILL, humans' toward their pooled skill (confusion.shrink_skills), published as
`human_weight` for annotators the fit has not seen.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.aggregators.base import DEFAULT_SKILL, MIN_GOLD, ItemVotes, Params, Triple
from ensembles.aggregators.confusion import shrink_skills
from ensembles.aggregators.one_coin import OneCoin
from ensembles.aggregators.skill_weighted import SkillWeighted


def log_odds(skill: float, k: int) -> float:
    skill = min(max(skill, 1e-6), 1 - 1e-6)
    return max(math.log((k - 1) * skill / (1 - skill)), 0.0)


class Weighted(SkillWeighted):
    name = "weighted"
    key = "weights"
    soft_fit = True

    def default_weight(self, k: int) -> float:
        return log_odds(DEFAULT_SKILL, k)

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """The one-coin accuracy behind each log-odds weight: s = e^w / (K - 1 + e^w)."""
        k = len(labels)
        return {m: math.exp(w) / (k - 1 + math.exp(w)) for m, w in (params or {}).get("weights", {}).items()}

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None, *,
            item_votes: ItemVotes | None = None, min_gold: int = MIN_GOLD) -> Params:
        """One-coin skills, shrunk (humans toward their pool), as log-odds weights."""
        skills = OneCoin().fit(votes, labels, item_votes=item_votes)["skills"]
        shrunk, human = shrink_skills(skills, Counter(member for _, member, _ in votes))
        params: dict[str, Any] = {"weights": {m: log_odds(s, len(labels)) for m, s in shrunk.items()}}
        if human is not None:
            params["human_weight"] = log_odds(human, len(labels))
        return params
