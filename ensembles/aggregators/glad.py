"""GLAD: member ability times item difficulty (crowd-kit). A new item gets the median fitted difficulty."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ensembles.aggregators.base import FitData, Params
from ensembles.aggregators.confusion import ConfusionAggregator, Matrix, one_coin, vote_counts


class Glad(ConfusionAggregator):
    name = "glad"

    def fit(self, data: FitData) -> Params:
        from crowdkit.aggregation import GLAD

        from ensembles.aggregators.crowdkit_frame import frame

        model = GLAD(n_iter=100).fit(frame(data.triples))
        return {"prior": {str(k): float(v) for k, v in model.priors_.items()},
                "alphas": {str(w): float(a) for w, a in model.alphas_.items()},
                "beta": float(model.betas_.median()), "votes_per_member": vote_counts(data)}

    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        scale = math.exp(float(params.get("beta", 0.0)))
        return {m: one_coin(1 / (1 + math.exp(-float(a) * scale)), len(labels))
                for m, a in params.get("alphas", {}).items()}
