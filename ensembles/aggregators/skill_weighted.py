"""Skill-weighted voting: Wawa and ZeroBasedSkill learn one skill per member (crowd-kit); votes weigh by it."""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.aggregators.base import DEFAULT_SKILL, Aggregator, FitData, Params, normalise
from ensembles.temperature import soft
from ensembles.votes import Vote


class SkillWeighted(Aggregator):
    """Posterior = skill-weighted (soft) votes, normalised; unseen members weigh the default weight."""

    crowdkit_class: str
    key = "skills"

    def default_weight(self, k: int) -> float:
        return DEFAULT_SKILL

    def fit(self, data: FitData) -> Params:
        import crowdkit.aggregation

        from ensembles.aggregators.crowdkit_frame import frame

        model = getattr(crowdkit.aggregation, self.crowdkit_class)().fit(frame(data.triples))
        return {"skills": {str(w): float(s) for w, s in model.skills_.items()}}

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        return {m: min(max(float(s), 0.0), 1.0) for m, s in (params or {}).get("skills", {}).items()}

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        skills = (params or {}).get(self.key, {})
        default = self.default_weight(len(labels))
        index = {label: i for i, label in enumerate(labels)}
        mass = [0.0] * len(labels)
        for vote in votes:
            if vote.label is None:
                continue
            w = max(float(skills.get(vote.member, default)), 0.0)
            probs = soft(vote, len(labels))
            if probs is not None:
                for i, p in enumerate(probs):
                    mass[i] += w * p
            else:
                mass[index[vote.label]] += w
        return normalise(mass)


class Wawa(SkillWeighted):
    name = "wawa"
    crowdkit_class = "Wawa"


class ZeroBasedSkill(SkillWeighted):
    name = "zero_based_skill"
    crowdkit_class = "ZeroBasedSkill"
