"""Per-member temperature of soft votes, fitted on gold: an over-confident member stops dominating.

A member whose token probabilities say 0.99 while it is right 75% of the time outweighs every
honest member in a soft vote. Temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017) replaces its soft vote p by p^(1/T), renormalised, with T chosen to minimise
the negative log-likelihood of the gold labels. `temper` is the request-path half (pure Python);
`fit_temperatures` runs in the refit (numpy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.votes import Vote

FLOOR = 1e-6
GRID = (0.1, 10.0, 61)
"""Temperatures searched: 61 points spaced evenly in log between 0.1 (sharpen) and 10 (flatten), 1 included."""
PRIOR_SD = 0.5
"""Spread of the prior on log T: T = 0.5 or 2 costs half a nat, as much as one gold item's evidence."""
MIN_GOLD_PER_LABEL = 15
"""Gold items per label a member's soft votes need before a temperature is fitted: top-k log-probabilities
put zero on most labels, so on a few dozen items one miss drives the fit to the flattest temperature, which
erases the member's signal (measured on 7 intents with 50 gold: stacking 0.115 with, 0.56 without)."""


def temper(probs: Sequence[float], t: float) -> tuple[float, ...]:
    """p^(1/t), renormalised; probabilities are floored so a zero stays possible after tempering."""
    q = [max(p, FLOOR) ** (1.0 / t) for p in probs]
    total = sum(q)
    return tuple(x / total for x in q)


def soft(vote: Vote, k: int) -> Sequence[float] | None:
    """The vote's soft distribution over k labels; None for a hard vote (or one of another label set's size)."""
    probs = vote.probs
    return probs if probs is not None and len(probs) == k else None


def temper_all(votes: Sequence[Vote], temperatures: Mapping[str, float]) -> list[Vote]:
    """Each soft vote of a member with a fitted temperature, tempered (the request-path half)."""
    return [Vote(v.member, v.label, None, temper(v.probs, t))
            if v.probs is not None and (t := temperatures.get(v.member)) is not None else v for v in votes]


def fit_temperatures(item_votes: Mapping[str, Sequence[Vote]], labels: Sequence[str], gold: Mapping[str, str],
                     min_gold: int) -> dict[str, float]:
    """Each member's NLL-minimising temperature, for members with soft votes on enough gold items (at least
    `min_gold`, and MIN_GOLD_PER_LABEL per label)."""
    index = {label: i for i, label in enumerate(labels)}
    by_member: dict[str, tuple[list[Sequence[float]], list[int]]] = {}
    for item, truth in gold.items():
        if truth not in index:
            continue
        seen: set[str] = set()
        for vote in item_votes.get(item, ()):
            if vote.probs is None or len(vote.probs) != len(labels) or vote.member in seen:
                continue
            seen.add(vote.member)
            probs, truths = by_member.setdefault(vote.member, ([], []))
            probs.append(vote.probs)
            truths.append(index[truth])
    needed = max(min_gold, MIN_GOLD_PER_LABEL * len(labels))
    return {member: best_temperature(probs, truths) for member, (probs, truths) in sorted(by_member.items())
            if len(truths) >= needed}


def best_temperature(probs: Any, truths: Any, prior_sd: float = PRIOR_SD) -> float:
    """The temperature of GRID that best explains the true classes `truths` (indices, or an (n, K) array of each
    item's class probabilities, as EM's posteriors) under the distributions `probs`: the negative log-likelihood
    plus a normal prior on log T around 0 (T = 1) with sd `prior_sd`.

    Why the prior: on a few dozen gold items that all came out right, the likelihood alone keeps sharpening to the
    grid's end (measured: T = 0.1 from 50 right items, confidence 1.000 on items that were 92% right)."""
    import numpy as np

    grid = np.exp(np.linspace(np.log(GRID[0]), np.log(GRID[1]), GRID[2]))
    logp = np.log(np.maximum(np.asarray(probs, dtype=float), FLOOR))  # (n, K)
    scaled = logp[None, :, :] / grid[:, None, None]  # (G, n, K)
    top = scaled.max(axis=2, keepdims=True)
    log_norm = (top + np.log(np.exp(scaled - top).sum(axis=2, keepdims=True)))[:, :, 0]
    targets = np.asarray(truths)
    if targets.ndim == 1:
        targets = np.eye(logp.shape[1])[targets]
    nll = -((scaled - log_norm[:, :, None]) * targets[None]).sum(axis=(1, 2)) + np.log(grid) ** 2 / (2 * prior_sd ** 2)
    return float(grid[int(np.argmin(nll))])


def temper_items(item_votes: Mapping[str, Sequence[Vote]], temperatures: Mapping[str, float]) -> dict[str, list[Vote]]:
    """`temper_all` over every item, as the fits should see the votes."""
    return {item: temper_all(votes, temperatures) if temperatures else list(votes) for item, votes in item_votes.items()}
