"""Dawid-Skene: a full confusion matrix per member, fitted by EM (crowd-kit), anchored by gold labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import Params, Triple
from ensembles.aggregators.confusion import ConfusionAggregator, Matrix, one_coin
from ensembles.aggregators.base import DEFAULT_SKILL


class DawidSkene(ConfusionAggregator):
    name = "dawid_skene"

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None) -> Params:
        import pandas as pd
        from crowdkit.aggregation import DawidSkene as CrowdKitDS

        from ensembles.aggregators.crowdkit_frame import frame

        data = frame(votes)
        items = set(data["task"])
        true = pd.Series({i: g for i, g in (gold or {}).items() if i in items}, dtype=object)
        model = CrowdKitDS(n_iter=100).fit(data, true_labels=true if len(true) else None)
        confusion: dict[str, dict[str, dict[str, float]]] = {}
        for (worker, observed), row in model.errors_.iterrows():
            for truth, p in row.items():
                confusion.setdefault(str(worker), {}).setdefault(str(truth), {})[str(observed)] = float(p)
        return {"prior": {str(k): float(v) for k, v in model.priors_.items()}, "confusion": confusion}

    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        default = one_coin(DEFAULT_SKILL, len(labels))
        out = {}
        for member, by_true in params.get("confusion", {}).items():
            out[member] = [[float(by_true[t].get(o, 0.0)) for o in labels] if t in by_true else default[i]
                           for i, t in enumerate(labels)]
        return out
