"""Calibration: map the posterior's top probability to the observed chance of being right.

Fitted off the request path on items with gold labels, as Platt scaling (Platt, "Probabilistic Outputs
for Support Vector Machines", 1999): a logistic regression of "was right" on the logit of the top
probability, two numbers (scikit-learn, L2-regularised). Applied on the request path as one sigmoid.
Why not isotonic regression, as before: with a few dozen gold items its step function overfits; measured
on the local pool with 50 gold (bench/quality_real.py, auto), ECE on held-out items went from 0.083 /
0.055 / 0.019 / 0.067 (isotonic) to 0.034 / 0.025 / 0.019 / 0.077 (Platt) on imdb / amazon / tweets /
intents. A cascade decides after one, two, three votes, where the same raw posterior means less than
after the whole crowd: a map per number of valid votes (`by_votes`) calibrates each of those
decisions; the main map is the fallback. Maps published by older versions (isotonic breakpoints `x`
-> `y`) are still applied as they were.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

EPS = 1e-6


def logit(p: float) -> float:
    p = min(max(p, EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def fit_calibration(confidences: Sequence[float], correct: Sequence[bool]) -> dict[str, Any]:
    """Platt map `platt` = (slope, intercept) from the logit of the raw confidence to P(right).

    The slope is kept non-negative, so a higher posterior never means a lower calibrated confidence; when
    every gold item was right (or every one wrong), the map is the observed rate with add-one smoothing.
    """
    n = len(confidences)
    rights = sum(bool(c) for c in correct)
    if rights in (0, n):
        rate = (rights + 1) / (n + 2)
        return {"platt": [0.0, logit(rate)], "n": n}
    from sklearn.linear_model import LogisticRegression

    x = [[logit(c)] for c in confidences]
    model = LogisticRegression(C=1.0).fit(x, [int(bool(c)) for c in correct])
    slope, intercept = float(model.coef_[0][0]), float(model.intercept_[0])
    if slope < 0.0:
        slope, intercept = 0.0, logit((rights + 1) / (n + 2))
    return {"platt": [slope, intercept], "n": n}


def calibrate(calibration: Mapping[str, Any] | None, confidence: float, votes: int | None = None) -> float:
    """The calibrated confidence after `votes` valid votes; unchanged when no calibration has been fitted."""
    if not calibration:
        return confidence
    if votes is not None:
        calibration = calibration.get("by_votes", {}).get(str(votes), calibration)
    if "platt" in calibration:
        slope, intercept = calibration["platt"]
        z = slope * logit(confidence) + intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    xs, ys = calibration["x"], calibration["y"]
    if confidence <= xs[0]:
        return ys[0]
    if confidence >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, confidence)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (confidence - x0) / (x1 - x0)
