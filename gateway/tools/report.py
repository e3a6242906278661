"""`crowd-gateway report`: what a finished annotation job says about its labels, its crowd and its cost.

Reads the OUT file of `crowd-gateway annotate` (CSV or JSONL) and prints: the label distribution,
a confidence histogram, agreement between members (pairwise, and Fleiss' kappa generalised to a
varying number of votes per item), escalations and review flags, cost, and, when a gold column is
present, the crowd's accuracy and macro-F1 next to every member's accuracy on the rows it answered:
the crowd is only worth its cost if it beats its best member. `--plots DIR` writes the same as PNG files.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensembles.metrics import macro_f1
from gateway.tools import HelpFormatter, UsageError
from gateway.tools.baseline import most_frequent
from gateway.tools.datasets import read_rows

BINS = 10


@dataclass
class Item:
    label: str
    confidence: float
    needs_review: bool
    escalated: bool
    cost_usd: float
    votes: dict[str, str | None]
    """member -> label (None: the member abstained or failed)."""
    vote_costs: dict[str, float]
    gold: str | None
    errors: dict[str, str]
    """member -> why its call failed (its votes without a label and with an error)."""


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value else value or []


def load_items(path: Path, gold_column: str | None) -> list[Item]:
    items = []
    for number, row in enumerate(read_rows(path), start=1):
        if "crowd_label" not in row:
            raise UsageError(f"{path} row {number} has no crowd_label: is it the OUT file of `annotate`?")
        votes = _json(row.get("crowd_votes"))
        gold = row.get(gold_column) if gold_column else None
        items.append(Item(label=str(row["crowd_label"]), confidence=float(row.get("crowd_confidence") or 0.0),
                          needs_review=_flag(row.get("crowd_needs_review")),
                          escalated=_flag(row.get("crowd_escalated")),
                          cost_usd=float(row.get("crowd_cost_usd") or 0.0),
                          votes={v["member"]: v.get("label") for v in votes},
                          vote_costs={v["member"]: float(v.get("cost_usd") or 0.0) for v in votes},
                          gold=str(gold) if gold not in (None, "") else None,
                          errors={v["member"]: str(v["error"]) for v in votes if v.get("label") is None
                                  and v.get("error")}))
    return items


def fleiss_kappa(items: list[Item]) -> float | None:
    """Fleiss' kappa over the items with two or more valid votes (raters may differ per item)."""
    rated = [Counter(label for label in item.votes.values() if label is not None) for item in items]
    rated = [counts for counts in rated if sum(counts.values()) >= 2]
    if not rated:
        return None
    agreement = [sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
                 for counts in rated for n in [sum(counts.values())]]
    totals: Counter[str] = Counter()
    for counts in rated:
        totals.update(counts)
    votes = sum(totals.values())
    expected = sum((c / votes) ** 2 for c in totals.values())
    observed = sum(agreement) / len(agreement)
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)


def summarise(items: list[Item]) -> dict[str, Any]:
    members = sorted({m for item in items for m in item.votes})
    pairwise = {}
    for a, b in itertools.combinations(members, 2):
        both = [(item.votes[a], item.votes[b]) for item in items
                if item.votes.get(a) is not None and item.votes.get(b) is not None]
        pairwise[(a, b)] = (sum(x == y for x, y in both) / len(both) if both else None, len(both))
    hist = [0] * BINS
    for item in items:
        hist[min(int(item.confidence * BINS), BINS - 1)] += 1
    summary: dict[str, Any] = {
        "items": len(items), "labels": Counter(item.label for item in items), "confidence_hist": hist,
        "mean_confidence": sum(i.confidence for i in items) / len(items) if items else 0.0,
        "members": members, "pairwise": pairwise, "fleiss_kappa": fleiss_kappa(items),
        "with_crowd": {m: _share([item.votes[m] == item.label for item in items if item.votes.get(m) is not None])
                       for m in members},
        "escalated": sum(i.escalated for i in items), "needs_review": sum(i.needs_review for i in items),
        "cost_usd": sum(i.cost_usd for i in items),
        "member_cost_usd": {m: sum(i.vote_costs.get(m, 0.0) for i in items) for m in members},
        "failed": {m: Counter(i.errors[m] for i in items if m in i.errors) for m in members},
    }
    graded = [item for item in items if item.gold is not None]
    if graded:
        pred, gold = [i.label for i in graded], [str(i.gold) for i in graded]
        summary["gold"] = {
            "items": len(graded), "labels": Counter(gold),
            "accuracy": _share([p == g for p, g in zip(pred, gold)]),
            "macro_f1": macro_f1(pred, gold, sorted(set(pred) | set(gold))), "baseline": most_frequent(gold),
            "members": {m: {"accuracy": _share([item.votes[m] == item.gold for item in graded
                                                if item.votes.get(m) is not None]),
                            "coverage": _share([item.votes.get(m) is not None for item in graded])}
                        for m in members},
        }
    return summary


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join([title, *lines[:1], "  ".join("-" * w for w in widths), *lines[1:], ""])


def render(s: dict[str, Any]) -> str:
    n = s["items"] or 1
    parts = [f"items: {s['items']}   mean confidence: {s['mean_confidence']:.3f}   escalated: {s['escalated']}   "
             f"needs review: {s['needs_review']}   cost: ${s['cost_usd']:.6f} (${s['cost_usd'] / n:.8f} per item)\n"]
    parts.append(_table("label distribution", ["label", "items", "share"],
                        [[label, c, c / n] for label, c in s["labels"].most_common()]))
    parts.append(_table("confidence", ["bin", "items"],
                        [[f"{i / BINS:.1f}-{(i + 1) / BINS:.1f}", c] for i, c in enumerate(s["confidence_hist"])]))
    if s["members"]:
        parts.append(_table(f"agreement between members (Fleiss' kappa {_fmt(s['fleiss_kappa'])})",
                            ["pair", "agreement", "items"],
                            [[f"{a} / {b}", share, count] for (a, b), (share, count) in s["pairwise"].items()]))
        gold = s.get("gold", {}).get("members", {})
        parts.append(_table("members (gold accuracy: of the answers it gave; coverage: items it answered; a failed "
                            "call is not a wrong answer)",
                            ["member", "agrees with crowd", "cost_usd", "gold accuracy", "coverage", "failed calls"],
                            [[m, s["with_crowd"][m], f"{s['member_cost_usd'][m]:.6f}", gold.get(m, {}).get("accuracy"),
                              gold.get(m, {}).get("coverage"), _failed(s["failed"][m])] for m in s["members"]]))
    if "gold" in s:
        g = s["gold"]
        best = max((v["accuracy"] or 0.0 for v in g["members"].values()), default=None)
        baseline = g["baseline"]
        parts.append(_table(f"against gold ({g['items']} items)", ["", "accuracy", "macro-F1"],
                            [["crowd", g["accuracy"], g["macro_f1"]], ["best member", best, None],
                             [baseline.describe(), baseline.accuracy, None]]))
    return "\n".join(parts)


def _failed(reasons: Counter[str]) -> str:
    return failed_calls(sum(reasons.values()), reasons.most_common(1)[0][0] if reasons else None)


def failed_calls(count: int, reason: str | None) -> str:
    """`0`, or the count of a member's failed calls and their most frequent reason, cut short."""
    if not count or reason is None:
        return str(count)
    return f"{count} ({reason if len(reason) <= 70 else reason[:69] + '…'})"


def plot(s: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG files of the label distribution, confidence, member agreement and (with gold) accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)

    labels = sorted(set(s["labels"]) | set(s.get("gold", {}).get("labels", {})))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [s["labels"].get(label, 0) for label in labels], 0.4, label="crowd")
    if "gold" in s:
        ax.bar(x + 0.2, [s["gold"]["labels"].get(label, 0) for label in labels], 0.4, label="gold")
    ax.set_xticks(x, labels)
    ax.set_ylabel("items")
    ax.set_title("label distribution")
    ax.legend()
    save(fig, "labels.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([(i + 0.5) / BINS for i in range(BINS)], s["confidence_hist"], width=0.9 / BINS)
    ax.set_xlabel("confidence")
    ax.set_ylabel("items")
    ax.set_title("confidence of the crowd's labels")
    save(fig, "confidence.png")

    members = s["members"]
    if len(members) >= 2:
        matrix = np.eye(len(members))
        for (a, b), (share, _) in s["pairwise"].items():
            i, j = members.index(a), members.index(b)
            matrix[i, j] = matrix[j, i] = np.nan if share is None else share
        fig, ax = plt.subplots(figsize=(1.2 * len(members) + 2, 1.2 * len(members) + 1))
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(members)), members, rotation=45, ha="right")
        ax.set_yticks(range(len(members)), members)
        for i, j in itertools.product(range(len(members)), repeat=2):
            value = matrix[i, j]
            ax.text(j, i, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                    color="black" if value > 0.6 else "white")
        fig.colorbar(image)
        ax.set_title(f"pairwise agreement (kappa {_fmt(s['fleiss_kappa'])})")
        save(fig, "agreement.png")

    if "gold" in s and members:
        names = members + ["crowd"]
        scores = [s["gold"]["members"][m]["accuracy"] or 0.0 for m in members] + [s["gold"]["accuracy"] or 0.0]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(names, scores, color=["tab:blue"] * len(members) + ["tab:orange"])
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy against gold")
        ax.set_title("members and crowd")
        save(fig, "accuracy.png")
    return written


def run(args: argparse.Namespace) -> int:
    """Print the summary (and plots); a UsageError becomes one line and exit 2 in `gateway.cli.main`."""
    items = load_items(Path(args.out), args.gold_column)
    summary = summarise(items)
    print(render(summary))
    if args.plots:
        for path in plot(summary, Path(args.plots)):
            print(f"wrote {path}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="summarise the OUT file of `annotate`", description=__doc__,
                       formatter_class=HelpFormatter)
    p.add_argument("out", help="OUT.csv or OUT.jsonl written by `crowd-gateway annotate`")
    p.add_argument("--gold-column", default="label", help="column with gold labels, if any (default: label)")
    p.add_argument("--plots", help="directory to write PNG plots into")
    p.set_defaults(func=run)
