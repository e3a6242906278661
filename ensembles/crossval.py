"""Out-of-fold posteriors on gold, and the metrics a choice is made by.

Why one module: `auto` scores its candidates and the refit calibrates any aggregator that learns from gold on
the same out-of-fold posteriors, computed by the same `combine` that serves answers (train/serve parity: what is
scored is what will be served). An aggregator that does not read gold is fitted once: its posterior on a gold
item is out of fold already.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from ensembles.aggregators.base import Aggregator, FitData, Metric, Params
from ensembles.labels import pick

FOLDS = 5
Dists = dict[str, list[float]]
"""Gold item -> the posterior it got while held out."""


def folds(items: Sequence[str], k: int = FOLDS, seed: int = 0) -> list[list[str]]:
    """`items` shuffled by `seed` and dealt into k folds: a refit on the same data splits the same way."""
    order = list(items)
    random.Random(seed).shuffle(order)
    k = min(k, len(order))
    return [order[f::k] for f in range(k)]


def out_of_fold(agg: Aggregator, data: FitData, splits: Sequence[Sequence[str]],
                fitted: Params | None = None) -> tuple[Dists, list[Params | None]]:
    """Each gold item's posterior under `agg` fitted without that item's fold (once on everything, `fitted` if
    given, when the fit ignores gold), and the fold fits."""
    labels = data.labels
    if not agg.uses_gold:
        params = fitted if fitted is not None else agg.fit(data)
        return {i: agg.combine(data.votes[i], labels, params) for fold in splits for i in fold}, [params] * len(splits)
    out: Dists = {}
    fits = []
    for fold in splits:
        held = set(fold)
        params = agg.fit(data.with_gold({i: g for i, g in data.gold.items() if i not in held}))
        fits.append(params)
        out.update((i, agg.combine(data.votes[i], labels, params)) for i in fold)
    return out, fits


def item_weights(truths: Sequence[str], metric: Metric) -> list[float]:
    """Per item, what one right answer is worth in the metric's average: 1 for accuracy; n / (labels present x
    items of its label) for the balanced metrics (macro-F1's standard error is estimated as balanced accuracy's)."""
    if metric == "accuracy":
        return [1.0] * len(truths)
    counts: dict[str, int] = {}
    for truth in truths:
        counts[truth] = counts.get(truth, 0) + 1
    return [len(truths) / (len(counts) * counts[t]) for t in truths]


def scores(dists: Mapping[str, Sequence[float]], gold: Mapping[str, str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and log-loss of the posteriors on their gold items."""
    from ensembles.metrics import macro_f1

    items = sorted(dists)
    truths = [gold[i] for i in items]
    predicted = [labels[pick(dists[i])] for i in items]
    right = [p == t for p, t in zip(predicted, truths)]
    balanced = item_weights(truths, "balanced_accuracy")
    log_loss = -sum(math.log(max(dists[i][labels.index(gold[i])], 1e-12)) for i in items) / len(items)
    return {"accuracy": sum(right) / len(items), "balanced_accuracy": sum(w * r for w, r in zip(balanced, right)) / len(items),
            "macro_f1": macro_f1(predicted, truths, labels), "log_loss": log_loss}


def paired_gain(challenger: Sequence[bool], default: Sequence[bool], weights: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) of the challenger's per-item gain over the default, items weighted by the metric."""
    diff = [w * (float(a) - float(b)) for w, a, b in zip(weights, challenger, default)]
    n = len(diff)
    mean = sum(diff) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1) / n) if n > 1 else math.inf
    return mean, se
