"""MACE: each member either knows the answer or spams from its own label distribution (crowd-kit)."""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.aggregators.base import FitData, Params
from ensembles.aggregators.confusion import ConfusionAggregator, Matrix, vote_counts


class Mace(ConfusionAggregator):
    name = "mace"

    def fit(self, data: FitData) -> Params:
        import pandas as pd
        from crowdkit.aggregation import MACE

        from ensembles.aggregators.crowdkit_frame import frame

        frame_ = frame(data.triples)
        model = MACE(n_restarts=3, n_iter=50, random_state=0).fit(frame_)
        _, workers = pd.factorize(frame_["worker"])  # crowd-kit's own row and column order
        _, label_names = pd.factorize(frame_["label"])
        return {"knowing": {str(w): float(model.spamming_[i, 1]) for i, w in enumerate(workers)},
                "spam": {str(w): {str(lab): float(model.thetas_[i, j]) for j, lab in enumerate(label_names)}
                         for i, w in enumerate(workers)}, "votes_per_member": vote_counts(data)}

    def matrices(self, params: Params, labels: Sequence[str]) -> dict[str, Matrix]:
        out = {}
        for member, knowing in params.get("knowing", {}).items():
            spam = params["spam"][member]
            know = float(knowing)
            out[member] = [[(1 - know) * float(spam.get(obs, 0.0)) + (know if t == o else 0.0)
                            for o, obs in enumerate(labels)] for t in range(len(labels))]
        return out
