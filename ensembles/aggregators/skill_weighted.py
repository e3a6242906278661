"""Skill-weighted voting: Wawa and ZeroBasedSkill learn one skill per member (crowd-kit); votes weigh by it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import DEFAULT_SKILL, Aggregator, Params, Triple, normalise
from ensembles.temperature import soft
from ensembles.votes import HUMAN_PREFIX, Vote


class SkillWeighted(Aggregator):
    """Posterior = skill-weighted (soft, tempered) votes, normalised; unseen members weigh DEFAULT_SKILL,
    unseen humans the pooled human weight when the fit published one (`human_key`)."""

    crowdkit_class: str
    key = "skills"
    human_key = "human_weight"

    def default_weight(self, k: int) -> float:
        return DEFAULT_SKILL

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None) -> Params:
        import crowdkit.aggregation

        from ensembles.aggregators.crowdkit_frame import frame

        model = getattr(crowdkit.aggregation, self.crowdkit_class)().fit(frame(votes))
        return {"skills": {str(w): float(s) for w, s in model.skills_.items()}}

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        return {m: min(max(float(s), 0.0), 1.0) for m, s in (params or {}).get("skills", {}).items()}

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        params = params or {}
        skills = params.get(self.key, {})
        temps = params.get("temperatures")
        default = self.default_weight(len(labels))
        human = params.get(self.human_key, default)
        index = {label: i for i, label in enumerate(labels)}
        mass = [0.0] * len(labels)
        for vote in votes:
            if vote.label is None:
                continue
            w = skills.get(vote.member)
            if w is None:
                w = human if vote.member.startswith(HUMAN_PREFIX) else default
            w = max(float(w), 0.0)
            probs = soft(vote, len(labels), temps)
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
