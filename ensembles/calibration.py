"""Calibration: map the posterior's top probability to the observed chance of being right.

Fitted off the request path with isotonic regression (scikit-learn) on items with gold labels;
applied on the request path as a piecewise-linear lookup, a few comparisons. A cascade decides after
one, two, three votes, where the same raw posterior means less than after the whole crowd: a map
per number of valid votes (`by_votes`) calibrates each of those decisions; the main map is the
fallback.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any


def fit_calibration(confidences: Sequence[float], correct: Sequence[bool]) -> dict[str, Any]:
    """Isotonic map from raw confidence to accuracy, as breakpoints `x` -> `y`."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(list(confidences), [float(c) for c in correct])
    return {"x": [float(x) for x in iso.X_thresholds_], "y": [float(y) for y in iso.y_thresholds_],
            "n": len(confidences)}


def calibrate(calibration: Mapping[str, Any] | None, confidence: float, votes: int | None = None) -> float:
    """The calibrated confidence after `votes` valid votes; unchanged when no calibration has been fitted."""
    if not calibration:
        return confidence
    if votes is not None:
        calibration = calibration.get("by_votes", {}).get(str(votes), calibration)
    xs, ys = calibration["x"], calibration["y"]
    if confidence <= xs[0]:
        return ys[0]
    if confidence >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, confidence)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (confidence - x0) / (x1 - x0)
