"""EM for Dawid-Skene and one-coin on soft votes (numpy), off the request path.

crowd-kit 1.4.2 fits only hard labels. Here a soft vote x (the member's distribution over labels)
enters the M-step as expected counts: vote v on item i adds T[i,k] * x[l] to member m's count of
answering l when the truth is k, so a member that says 0.7 where it is right counts 0.7 right, not
1. The E-step scores a vote by its expected likelihood sum_l x[l] * conf[k][l], exactly as the
request-path posterior does (confusion.py), so fitted labels are the labels the gateway will give.
With one-hot votes this is Dawid & Skene (1979), "Maximum likelihood estimation of observer
error-rates using the EM algorithm", started from majority vote as crowd-kit starts; gold items
keep their known class in every E-step.

People's votes are not fitted here: they join after the aggregator (ensembles/humans.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ensembles.aggregators.base import ItemVotes

_FLOOR = 1e-12
SEEN = 1e-6
"""Expected votes on a true class below which a member's row for that class is unknown, not estimated."""


@dataclass
class SoftFit:
    """Fitted state: class prior, each member's confusion matrix and its expected answers per true class."""

    members: list[str]
    prior_: np.ndarray
    confusion_: np.ndarray
    """(members, K, K): confusion_[m, k, l] = P(member m answers l | true k)."""
    mass_: np.ndarray
    """(members, K): expected number of votes member m cast on items of true class k."""


def fit_soft_em(item_votes: ItemVotes, labels: Sequence[str], gold: Mapping[str, str] | None = None,
                one_coin: bool = False, n_iter: int = 100, tol: float = 1e-5) -> SoftFit:
    """Dawid-Skene (or one-coin, one accuracy per member) by EM over soft and hard votes."""
    k = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    items = sorted(item_votes)
    members = sorted({v.member for votes in item_votes.values() for v in votes if v.label is not None})
    m_index = {m: i for i, m in enumerate(members)}
    vi, vm, xs = [], [], []
    for i, item in enumerate(items):
        for vote in item_votes[item]:
            if vote.label is None:
                continue
            vi.append(i)
            vm.append(m_index[vote.member])
            if vote.probs is not None and len(vote.probs) == k:
                xs.append(vote.probs)
            else:
                xs.append([1.0 if j == index[vote.label] else 0.0 for j in range(k)])
    vi_a, vm_a = np.asarray(vi, dtype=int), np.asarray(vm, dtype=int)
    x = np.asarray(xs, dtype=float).reshape(len(xs), k)
    clamp = np.full(len(items), -1)
    for i, item in enumerate(items):
        if gold and gold.get(item) in index:
            clamp[i] = index[gold[item]]
    fixed = clamp >= 0

    t = np.zeros((len(items), k))
    np.add.at(t, vi_a, x)  # majority vote (soft) as the start
    t = _clamped(t / np.maximum(t.sum(axis=1, keepdims=True), _FLOOR), clamp, fixed)
    last = -np.inf
    for _ in range(n_iter):
        # M-step: expected counts of each member's answers per true class
        counts = np.zeros((len(members), k, k))
        np.add.at(counts, vm_a, t[vi_a][:, :, None] * x[:, None, :])
        mass = counts.sum(axis=2)
        if one_coin:
            skill = np.trace(counts, axis1=1, axis2=2) / np.maximum(counts.sum(axis=(1, 2)), _FLOOR)
            off = (1 - skill) / max(k - 1, 1)
            conf = np.repeat(off[:, None, None], k, axis=1).repeat(k, axis=2)
            conf[:, np.arange(k), np.arange(k)] = skill[:, None]
        else:
            rows = counts.sum(axis=2)
            conf = np.where(rows[:, :, None] > SEEN, counts / np.maximum(rows, SEEN)[:, :, None], 1.0 / k)
        prior = np.maximum(t.mean(axis=0), _FLOOR)
        # E-step
        lik = np.einsum("vl,vkl->vk", x, conf[vm_a])  # P(vote | true = k)
        log_t = np.tile(np.log(prior), (len(items), 1))
        np.add.at(log_t, vi_a, np.log(np.maximum(lik, _FLOOR)))
        top = log_t.max(axis=1, keepdims=True)
        t = np.exp(log_t - top)
        norm = t.sum(axis=1, keepdims=True)
        t = _clamped(t / norm, clamp, fixed)
        loglik = float((top[:, 0] + np.log(norm[:, 0])).mean())  # per item, so `tol` is as crowd-kit's
        if loglik - last < tol:
            break
        last = loglik
    return SoftFit(members, prior, conf, mass)


def _clamped(t: np.ndarray, clamp: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Gold items' class distribution set to their known class."""
    t[fixed] = 0.0
    t[fixed, clamp[fixed]] = 1.0
    return t
