"""One-coin Dawid-Skene: one accuracy per member, errors spread evenly, fitted by EM on soft and hard votes.

Model and citation in soft_em.py; with hard votes only the fit is crowd-kit's OneCoinDawidSkene (test_parity checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.aggregators.base import FitData, Params
from ensembles.aggregators.confusion import ConfusionAggregator, Matrix, one_coin, vote_counts


class OneCoin(ConfusionAggregator):
    name = "one_coin"

    def fit(self, data: FitData) -> Params:
        """Prior and skills, unanchored (as crowd-kit's one-coin): gold does not enter the fit."""
        from ensembles.aggregators.soft_em import fit_soft_em

        model = fit_soft_em(data.votes, data.labels, one_coin=True)
        return {"prior": {label: float(p) for label, p in zip(data.labels, model.prior_)},
                "skills": {member: float(model.confusion_[m, 0, 0]) for m, member in enumerate(model.members)},
                "votes_per_member": vote_counts(data)}

    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        return {m: one_coin(float(s), len(labels)) for m, s in params.get("skills", {}).items()}
