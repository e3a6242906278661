"""Dawid-Skene: a full confusion matrix per member, fitted by EM on soft and hard votes, anchored by gold labels.

Model and citation in soft_em.py; with hard votes only the fit is crowd-kit's DawidSkene (test_parity checks it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import DEFAULT_SKILL, MIN_GOLD, ItemVotes, Params, Triple, votes_of
from ensembles.aggregators.confusion import ConfusionAggregator, Matrix, one_coin


class DawidSkene(ConfusionAggregator):
    name = "dawid_skene"
    soft_fit = True
    uses_gold = True

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None, *,
            item_votes: ItemVotes | None = None, min_gold: int = MIN_GOLD) -> Params:
        """Prior and confusion rows (only the true classes the member was seen on) by soft EM."""
        from ensembles.aggregators.soft_em import fit_soft_em

        model = fit_soft_em(item_votes if item_votes is not None else votes_of(votes), labels, gold)
        confusion = {member: {labels[t]: {labels[o]: float(model.confusion_[m, t, o]) for o in range(len(labels))}
                              for t in range(len(labels)) if model.mass_[m, t] > 0}
                     for m, member in enumerate(model.members)}
        return {"prior": {label: float(p) for label, p in zip(labels, model.prior_)}, "confusion": confusion}

    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        default = one_coin(DEFAULT_SKILL, len(labels))
        out = {}
        for member, by_true in params.get("confusion", {}).items():
            out[member] = [[float(by_true[t].get(o, 0.0)) for o in labels] if t in by_true else default[i]
                           for i, t in enumerate(labels)]
        return out
