"""One-coin Dawid-Skene: one accuracy per member, errors spread evenly (crowd-kit's OneCoinDawidSkene)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import Params, Triple
from ensembles.aggregators.confusion import ConfusionAggregator, Matrix, one_coin


class OneCoin(ConfusionAggregator):
    name = "one_coin"

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None) -> Params:
        from crowdkit.aggregation import OneCoinDawidSkene

        from ensembles.aggregators.crowdkit_frame import frame

        model = OneCoinDawidSkene(n_iter=100).fit(frame(votes))
        return {"prior": {str(k): float(v) for k, v in model.priors_.items()},
                "skills": {str(w): float(s) for w, s in model.skills_.items()}}

    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        return {m: one_coin(float(s), len(labels)) for m, s in params.get("skills", {}).items()}
