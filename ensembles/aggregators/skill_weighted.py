"""Skill-weighted voting: Wawa and ZeroBasedSkill learn one skill per member (crowd-kit); votes weigh by it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import DEFAULT_SKILL, Aggregator, Params, Triple, normalise
from ensembles.votes import Vote


class SkillWeighted(Aggregator):
    """Posterior = skill-weighted (soft) votes, normalised; unseen members weigh DEFAULT_SKILL."""

    crowdkit_class: str
    key = "skills"

    def default_weight(self, k: int) -> float:
        return DEFAULT_SKILL

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None) -> Params:
        import crowdkit.aggregation

        from ensembles.aggregators.crowdkit_frame import frame

        model = getattr(crowdkit.aggregation, self.crowdkit_class)().fit(frame(votes))
        return {"skills": {str(w): float(s) for w, s in model.skills_.items()}}

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        return {m: min(max(float(s), 0.0), 1.0) for m, s in (params or {}).get("skills", {}).items()}

    def posterior(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        skills = (params or {}).get(self.key, {})
        default = self.default_weight(len(labels))
        index = {label: i for i, label in enumerate(labels)}
        mass = [0.0] * len(labels)
        for vote in votes:
            if vote.label is None:
                continue
            w = max(float(skills.get(vote.member, default)), 0.0)
            if vote.probs is not None and len(vote.probs) == len(labels):
                for i, p in enumerate(vote.probs):
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
