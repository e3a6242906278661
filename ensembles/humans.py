"""People join every answer: the LLM crowd's calibrated posterior first, then each person's label, weighed by a
reliability learned from every item people labelled (not only gold).

Why a layer of its own: a person's label is evidence of another kind than a member's vote. Mixed into the
LLM aggregator as one more worker, it was outvoted by look-alike members, shrunk toward an LLM default, or
dropped with every other vote when `auto` chose a single member (measured: DESIGN.md). Here the LLM crowd's
posterior q (whatever the aggregator, tempered to its out-of-fold calibration: a posterior that is surer than
it is right would drown the people) is the prior of each item, and the people's labels are likelihoods:

* `em` (the default): P(true = k | all) is proportional to q[k] * prod over people h of C_h[k][label_h], with
  each person's confusion matrix C_h fitted by EM over every item people labelled: gold items keep their known
  class, the others start from q (Dawid & Skene 1979 with the LLM crowd as each item's prior: "gold-anchored EM
  on the agreement with the LLM posterior"). People who label a few items each are a crowd of their own: every
  person's counts are shrunk toward the people's pooled matrix (PSEUDO_VOTES of it), itself shrunk toward
  DEFAULT_HUMAN_SKILL, so a newcomer weighs like the pool and a prolific person by their own record.
* `crowdlab`, when most items people labelled have labels from two or more people: CROWDLAB (Goh, Tkachenko
  and Mueller, "CROWDLAB: Supervised learning to infer consensus labels and quality scores for data with multiple
  annotators", 2022), fitted by cleanlab's own `get_label_quality_multiannotator` with the LLM crowd's posterior
  as `pred_probs`; the request path applies its published weights: a weighted mean of q and each person's
  label, as cleanlab computes its posterior.

Either way the joined posterior gets a temperature of its own (`temperature`), fitted on the gold items people
labelled (CROWDLAB's weighted mean is less sure than it is right: measured ECE 0.065 without it).

`join` is the request-path half (pure Python); `fit_humans` runs in the refit (numpy; cleanlab for crowdlab).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.temperature import temper
from ensembles.votes import Vote

DEFAULT_HUMAN_SKILL = 0.8
"""P(a person's label is right) before any fit, and what the people's pooled matrix is shrunk toward."""
PSEUDO_VOTES = 10.0
"""How many labels' worth of the pooled matrix each person's own counts are mixed with while there are too few
people to estimate it (`person_strength`)."""
MIN_PERSON_STRENGTH, MAX_PERSON_STRENGTH = 2.0, 1000.0
MIN_GOLD_LABELS = 20
"""People's labels on gold items from which the pooled matrix is counted directly (below: EM over all items)."""
POOL_PSEUDO_VOTES = 2.0
"""How many labels' worth of the default the pooled matrix is mixed with: a weak prior, since the pool sums every
person's labels (measured: 10 pulled a 0.98-accurate pool to 0.95 on 50 labels, and the crowd then overruled
people it should not have)."""
MIN_SHARED_ITEMS = 10
"""Items labelled by two or more people (and at least half of the people's items) before CROWDLAB is fitted: it
learns each person's weight from their agreement with others on shared items; EM needs none."""
_FLOOR = 1e-6


def one_coin(skill: float, k: int) -> list[list[float]]:
    """Right with probability `skill`, otherwise uniformly wrong."""
    off = (1.0 - skill) / (k - 1)
    return [[skill if t == o else off for o in range(k)] for t in range(k)]


def join(dist: list[float], people: Sequence[Vote], labels: Sequence[str], params: Mapping[str, Any]) -> list[float]:
    """The final posterior: the LLM crowd's `dist` tempered by the fit's `crowd_temperature`, then the people's
    labels on the item under the fitted `humans` parameters (the default person's reliability before any fit)."""
    t = params.get("crowd_temperature")
    if t is not None and t != 1.0:
        dist = list(temper(dist, t))
    if not people:
        return dist
    fitted = params.get("humans") or {}
    if fitted.get("method") == "crowdlab":
        dist = _crowdlab_posterior(dist, people, labels, fitted)
    else:
        dist = _product(dist, people, labels, fitted)
    t = fitted.get("temperature")
    return list(temper(dist, t)) if t is not None and t != 1.0 else dist


def _matrix(fitted: Mapping[str, Any], who: str, labels: Sequence[str]) -> list[list[float]]:
    mat = (fitted.get("people") or {}).get(who) or fitted.get("pooled")
    if mat is None:
        return one_coin(DEFAULT_HUMAN_SKILL, len(labels))
    return [[float(mat[t][o]) for o in labels] for t in labels]


def _product(dist: Sequence[float], people: Sequence[Vote], labels: Sequence[str],
             fitted: Mapping[str, Any]) -> list[float]:
    index = {label: i for i, label in enumerate(labels)}
    scores = [math.log(max(p, _FLOOR)) for p in dist]
    for vote in people:
        mat = _matrix(fitted, vote.member, labels)
        obs = index[vote.label]  # type: ignore[index]
        for t in range(len(labels)):
            scores[t] += math.log(max(mat[t][obs], _FLOOR))
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _crowdlab_posterior(dist: Sequence[float], people: Sequence[Vote], labels: Sequence[str],
                        fitted: Mapping[str, Any]) -> list[float]:
    """cleanlab's CROWDLAB posterior: the model's probabilities and each person's smoothed label, averaged with the
    fitted weights (a person the fit did not see weighs the people's mean weight)."""
    k = len(labels)
    agree = float(fitted["consensus_likelihood"])
    disagree = (1.0 - agree) / (k - 1)
    weights = fitted["weights"]
    mass = [float(fitted["model_weight"]) * p for p in dist]
    total = float(fitted["model_weight"])
    for vote in people:
        w = float(weights.get(vote.member, fitted["mean_weight"]))
        total += w
        for t, label in enumerate(labels):
            mass[t] += w * (agree if vote.label == label else disagree)
    return [m / total for m in mass]


def fit_humans(prior: Mapping[str, Sequence[float]], people: Mapping[str, Sequence[Vote]], labels: Sequence[str],
               gold: Mapping[str, str]) -> dict[str, Any] | None:
    """The people's parameters (`method` em or crowdlab), from each labelled item's LLM posterior `prior` (uniform
    where the crowd did not vote) and the gold labels; None when nobody labelled anything."""
    if not people:
        return None
    shared = sum(1 for votes in people.values() if len({v.member for v in votes}) >= 2)
    if shared >= max(MIN_SHARED_ITEMS, len(people) / 2):
        return _fit_crowdlab(prior, people, labels)
    return _fit_em(prior, people, labels, gold)


def _fit_em(prior: Mapping[str, Sequence[float]], people: Mapping[str, Sequence[Vote]], labels: Sequence[str],
            gold: Mapping[str, str], n_iter: int = 50, tol: float = 1e-6) -> dict[str, Any]:
    """EM of the module docstring. The pool is counted on gold directly once people labelled MIN_GOLD_LABELS gold
    items (EM's pool is pulled toward the crowd wherever the crowd is surer than it is right: measured 0.5 points
    lost on the VADER sets); each person keeps EM's deviation from EM's pool, shrunk by `person_strength`."""
    import numpy as np

    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    items = sorted(people)
    who = sorted({v.member for votes in people.values() for v in votes})
    w_index = {w: i for i, w in enumerate(who)}
    vi, vw, vl = [], [], []
    for i, item in enumerate(items):
        seen: set[str] = set()
        for vote in people[item]:
            if vote.member not in seen and vote.label in index:
                seen.add(vote.member)
                vi.append(i), vw.append(w_index[vote.member]), vl.append(index[vote.label])
    vi_a, vw_a, vl_a = np.asarray(vi), np.asarray(vw), np.asarray(vl)
    log_prior = np.log(np.maximum(np.asarray([prior.get(item) or [1.0 / k] * k for item in items], float), _FLOOR))
    clamp = np.asarray([index.get(gold.get(item, ""), -1) for item in items])
    known = clamp >= 0
    default = np.asarray(one_coin(DEFAULT_HUMAN_SKILL, k))
    conf = np.repeat(default[None], len(who), axis=0)
    for _ in range(n_iter):
        log_t = log_prior.copy()
        own = np.log(np.maximum(conf[vw_a, :, vl_a], _FLOOR))  # (votes, k): log P(the vote's label | true k)
        np.add.at(log_t, vi_a, own)
        posterior = np.exp(log_t - log_t.max(axis=1, keepdims=True))
        posterior /= posterior.sum(axis=1, keepdims=True)
        posterior[known] = 0.0
        posterior[known, clamp[known]] = 1.0
        counts = np.zeros((len(who), k, k))
        np.add.at(counts, (vw_a, slice(None), vl_a), posterior[vi_a])
        pooled = _smoothed(counts.sum(axis=0), default)
        strength = person_strength(_agreement(log_t[vi_a] - own, clamp[vi_a], vl_a), vw_a, len(who))
        new = (counts + strength * pooled[None]) / (counts.sum(axis=2, keepdims=True) + strength)
        change = float(np.abs(new - conf).max())
        conf = new
        if change < tol:
            break
    on_gold = known[vi_a]
    if int(on_gold.sum()) >= MIN_GOLD_LABELS:
        counted = np.zeros((k, k))
        np.add.at(counted, (clamp[vi_a[on_gold]], vl_a[on_gold]), 1.0)
        counted = _smoothed(counted, default)
        conf = np.clip(counted[None] + conf - pooled[None], _FLOOR, None)
        conf /= conf.sum(axis=2, keepdims=True)
        pooled = counted
    as_dict = lambda m: {labels[t]: {labels[o]: float(m[t, o]) for o in range(k)} for t in range(k)}  # noqa: E731
    n = np.bincount(vw_a, minlength=len(who))
    return {"method": "em", "pooled": as_dict(pooled), "person_strength": strength,
            "people": {w: as_dict(conf[i]) for i, w in enumerate(who)},
            "labels_per_person": {w: int(n[i]) for i, w in enumerate(who)}, "items": len(items)}


def _smoothed(counts: Any, default: Any) -> Any:
    """Counts (true x given) to a confusion matrix, each row mixed with POOL_PSEUDO_VOTES labels of the default."""
    return (counts + POOL_PSEUDO_VOTES * default) / (counts.sum(axis=1, keepdims=True) + POOL_PSEUDO_VOTES)


def _agreement(log_others: Any, truth: Any, said: Any) -> Any:
    """Per vote, the probability that its label is right under everything else known of its item (the crowd, the
    other people, gold): a record that the person's own label has not moved."""
    import numpy as np

    p = np.exp(log_others - log_others.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    known = truth >= 0
    p[known] = 0.0
    p[known, truth[known]] = 1.0
    return p[np.arange(len(said)), said]


def person_strength(agreement: Any, person: Any, people: int) -> float:
    """How many labels' worth of the pool each person's own record is mixed with: one vote's variance over the
    variance of the people's true agreement rates, that is how much more the rates spread than their numbers of
    labels explain (a method-of-moments empirical Bayes estimate: Efron & Morris 1975; rates weighed by labels).
    People who differ get their own record; people who do not, the pool (a fixed strength gave each of 40 equally
    reliable raters its own noise: measured 0.4 points lost)."""
    import numpy as np

    n = np.bincount(person, minlength=people).astype(float)
    agree = np.bincount(person, weights=agreement, minlength=people)
    seen = n > 0
    if seen.sum() < 2:
        return PSEUDO_VOTES
    mean = agree[seen].sum() / n[seen].sum()
    noise = float(((agreement - mean) ** 2).mean())  # one vote's variance (soft agreements vary less than 0/1 ones)
    excess = (agree[seen] / n[seen] - mean) ** 2 - noise / n[seen]
    spread = float((n[seen] * excess).sum() / n[seen].sum())
    if spread <= 0:
        return MAX_PERSON_STRENGTH
    return float(np.clip(noise / spread, MIN_PERSON_STRENGTH, MAX_PERSON_STRENGTH))


def _fit_crowdlab(prior: Mapping[str, Sequence[float]], people: Mapping[str, Sequence[Vote]],
                  labels: Sequence[str]) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator

    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    items = sorted(people)
    who = sorted({v.member for votes in people.values() for v in votes})
    table = pd.DataFrame(np.nan, index=items, columns=who)
    for item in items:
        for vote in people[item]:
            table.at[item, vote.member] = index[vote.label]  # type: ignore[index]
    pred_probs = np.asarray([prior.get(item) or [1.0 / k] * k for item in items], float)
    pred_probs = np.maximum(pred_probs, _FLOOR)
    pred_probs /= pred_probs.sum(axis=1, keepdims=True)
    found = get_label_quality_multiannotator(table, pred_probs, return_weights=True, verbose=False)
    quality = found["label_quality"]
    several = quality["num_annotations"].to_numpy() != 1
    weights = {w: float(x) for w, x in zip(who, found["annotator_weight"])}
    return {"method": "crowdlab", "model_weight": float(found["model_weight"]),
            "consensus_likelihood": float(quality["annotator_agreement"].to_numpy()[several].mean()),
            "weights": weights, "mean_weight": float(np.mean(list(weights.values()))), "items": len(items)}
