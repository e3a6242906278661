"""Dawid-Skene: a full confusion matrix per member, fitted by EM on soft and hard votes, anchored by gold labels.

Model and citation in soft_em.py; with hard votes only the fit is crowd-kit's DawidSkene (test_parity checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.aggregators.base import DEFAULT_SKILL, FitData, Params
from ensembles.aggregators.confusion import ConfusionAggregator, Matrix, one_coin, vote_counts


class DawidSkene(ConfusionAggregator):
    name = "dawid_skene"
    uses_gold = True

    def fit(self, data: FitData) -> Params:
        """Prior, confusion rows (only the true classes the member was seen on) and each row's expected votes, by soft EM."""
        from ensembles.aggregators.soft_em import SEEN, fit_soft_em

        labels = data.labels
        model = fit_soft_em(data.votes, labels, data.gold)
        confusion = {member: {labels[t]: {labels[o]: float(model.confusion_[m, t, o]) for o in range(len(labels))}
                              for t in range(len(labels)) if model.mass_[m, t] > SEEN}
                     for m, member in enumerate(model.members)}
        mass = {member: {labels[t]: float(model.mass_[m, t]) for t in range(len(labels))}
                for m, member in enumerate(model.members)}
        return {"prior": {label: float(p) for label, p in zip(labels, model.prior_)}, "confusion": confusion,
                "mass": mass, "votes_per_member": vote_counts(data)}

    def row_votes(self, params: Params, labels: Sequence[str], prior: Sequence[float]) -> dict[str, list[float]]:
        """The fit's expected votes per true class (`mass`), so a row seen on a sliver of an item barely counts."""
        if "mass" not in params:
            return super().row_votes(params, labels, prior)
        return {m: [float(by_true.get(t, 0.0)) for t in labels] for m, by_true in params["mass"].items()}

    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        """Rows of true classes the member was never seen on are one-coin at its mean accuracy on the others
        (DEFAULT_SKILL if none): a sparse annotator's one right answer says as much about the other class."""
        out = {}
        for member, by_true in params.get("confusion", {}).items():
            seen = [float(by_true[t].get(t, 0.0)) for t in labels if t in by_true]
            fill = one_coin(sum(seen) / len(seen) if seen else DEFAULT_SKILL, len(labels))
            out[member] = [[float(by_true[t].get(o, 0.0)) for o in labels] if t in by_true else fill[i]
                           for i, t in enumerate(labels)]
        return out
