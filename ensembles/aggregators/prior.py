"""The label prior: every item gets the gold labels' mix, whatever the votes say.

Why an aggregator that ignores votes: it is the trivial answer ("always the most frequent label") that any
crowd must beat, so `auto` scores it beside the others and serves it when the members know less than the
label mix does (measured: 8 newswire topics where every member was 5-11% right and the most frequent label
47%), and every quality report shows it as the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.aggregators.base import Aggregator, FitData, Params
from ensembles.debias import label_prior
from ensembles.votes import Vote

PSEUDO_COUNT = 1.0
"""Gold labels each label is given before counting (add-one smoothing): a label no gold item had stays possible."""


class Prior(Aggregator):
    name = "prior"
    uses_gold = True

    def fit(self, data: FitData) -> Params:
        mix = label_prior({i: data.gold[i] for i in data.gold_items}, data.labels, PSEUDO_COUNT)
        return {"prior": dict(zip(data.labels, mix))}

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        prior = (params or {}).get("prior")
        if not prior:
            return [1.0 / len(labels)] * len(labels)
        return [float(prior[label]) for label in labels]
