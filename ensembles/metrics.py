"""Quality metrics for labels with confidences: accuracy, macro-F1, calibration (ECE, Brier),
how well confidence ranks right above wrong (AUROC), and accuracy against coverage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def accuracy(pred: Sequence[str], gold: Sequence[str]) -> float:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else float("nan")


def macro_f1(pred: Sequence[str], gold: Sequence[str], labels: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(list(gold), list(pred), labels=list(labels), average="macro", zero_division=0))


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: |accuracy - confidence| per equal-width bin, weighted by bin size."""
    n = len(confidences)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidences) if lo < c <= hi or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return total


def brier(distributions: Sequence[Mapping[str, float]], gold: Sequence[str]) -> float:
    """Multi-class Brier score: mean squared distance between the distribution and the one-hot truth."""
    scores = [sum((p - (label == g)) ** 2 for label, p in dist.items()) for dist, g in zip(distributions, gold)]
    return sum(scores) / len(scores) if scores else float("nan")


def auroc(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Probability that a right label has higher confidence than a wrong one (NaN if all right or all wrong)."""
    if len(set(correct)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([int(c) for c in correct], list(confidences)))


def coverage_curve(confidences: Sequence[float], correct: Sequence[bool],
                   points: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 1.0)) -> list[tuple[float, float]]:
    """(coverage, accuracy) keeping only the most confident fraction of items."""
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    out = []
    for frac in points:
        keep = order[:max(1, round(frac * len(order)))]
        out.append((frac, sum(correct[i] for i in keep) / len(keep)))
    return out


def confusion(pred: Sequence[str | None], gold: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """gold label -> predicted label (or "abstain") -> count."""
    table = {g: {p: 0 for p in [*labels, "abstain"]} for g in labels}
    for p, g in zip(pred, gold):
        if g in table:
            table[g][p if p is not None else "abstain"] += 1
    return table
