"""`crowd-gateway eval`: run labeled data through an ensemble and report quality, calibration and cost.

It also re-aggregates the collected votes offline with every aggregator (`--votes FILE` reuses a
previous run's votes without calling any model), so users can compare algorithms on their own data.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensembles import metrics as m
from ensembles.aggregators import REGISTRY, FitData, get_aggregator, pick
from ensembles.votes import Vote
from gateway.tools import HelpFormatter, UsageError, add_no_cache, usd
from gateway.tools.baseline import Baseline, most_frequent
from gateway.tools.contribution import Contribution, contributions, print_contributions
from gateway.tools.datasets import load_dataset, row_ids, split_of
from gateway.tools.embedded import gateway_v1
from gateway.tools.labelling import Answer, label_items
from gateway.tools.report import failed_calls


async def annotate_items(base_url: str, api_key: str, ensemble: str, rows: Sequence[dict[str, Any]],
                         labels: Sequence[str], concurrency: int = 8, desc: str = "annotating",
                         task: str | None = None, cache: bool = True) -> list[dict[str, Any]]:
    """Every labelled row through the gateway, as a record with its gold label; failures are kept, not raised.
    `cache=False`: every member is asked, none answers from the gateway's response cache.

    The label set is sent as `labels`, or the configured `task` is named (its prompt and label set apply).
    """
    from tqdm import tqdm

    ids = row_ids(list(rows))
    records: list[dict[str, Any]] = [{} for _ in rows]
    bar = tqdm(total=len(rows), desc=desc, unit="item", dynamic_ncols=True)
    right = cost = 0.0

    def answered(answer: Answer) -> None:
        nonlocal right, cost
        row = rows[answer.index]
        records[answer.index] = {"id": ids[answer.index], "text": row["text"], "gold": row["label"],
                                 "annotation": answer.annotation, "cost_usd": answer.cost_usd, "error": answer.error}
        right += bool(answer.annotation and answer.annotation["label"] == row["label"])
        cost += answer.cost_usd
        bar.update(1)
        bar.set_postfix(acc=f"{right / bar.n:.3f}", cost=usd(cost))

    items = [(item_id, str(row["text"])) for item_id, row in zip(ids, rows)]
    try:
        spec = {"task": task} if task else {"labels": list(labels)}
        await label_items(base_url, api_key, ensemble, items, spec, answered, concurrency=concurrency, cache=cache)
    finally:
        bar.close()
    return records


def summarize(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    done = [r for r in records if r["annotation"]]
    gold = [r["gold"] for r in done]
    pred = [r["annotation"]["label"] for r in done]
    conf = [r["annotation"]["confidence"] for r in done]
    correct = [p == g for p, g in zip(pred, gold)]
    members: dict[str, dict[str, Any]] = defaultdict(lambda: {"pred": [], "gold": [], "cost": 0.0,
                                                              "errors": Counter()})
    for r in done:
        for v in r["annotation"]["votes"]:
            members[v["member"]]["pred"].append(v["label"])
            members[v["member"]]["gold"].append(r["gold"])
            members[v["member"]]["cost"] += v["cost_usd"]
            if v["label"] is None:
                members[v["member"]]["errors"][v.get("error") or "no label"] += 1
    per_member = {name: member_summary(d, labels) for name, d in members.items()}
    total_cost = sum(r["cost_usd"] for r in records)
    baseline = most_frequent(gold)
    return {
        "baseline": {"label": baseline.label, "accuracy": baseline.accuracy} if baseline else None,
        "items": len(records), "failed": len(records) - len(done), "accuracy": m.accuracy(pred, gold),
        "macro_f1": m.macro_f1(pred, gold, labels), "ece": m.ece(conf, correct),
        "brier": m.brier([r["annotation"]["distribution"] for r in done], gold), "auroc": m.auroc(conf, correct),
        "mean_confidence": sum(conf) / len(conf) if conf else float("nan"),
        "accuracy_at_coverage": m.coverage_curve(conf, correct) if conf else [],
        "escalation_rate": sum(r["annotation"]["escalated"] for r in done) / len(done) if done else 0.0,
        "review_rate": sum(r["annotation"]["needs_review"] for r in done) / len(done) if done else 0.0,
        "cost_per_1000": 1000 * total_cost / len(records) if records else 0.0, "members": per_member,
    }


def member_summary(d: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """One member's figures: accuracy of the answers it gave, and its failed calls apart (a refused call is not a
    wrong answer), with the most frequent reason."""
    answered = [(p, g) for p, g in zip(d["pred"], d["gold"]) if p is not None]
    errors: Counter[str] = d["errors"]
    return {"accuracy": m.accuracy([p for p, _ in answered], [g for _, g in answered]) if answered else None,
            "answered": len(answered), "failed": sum(errors.values()),
            "error": errors.most_common(1)[0][0] if errors else None,
            "cost_per_1000": 1000 * d["cost"] / len(d["pred"]),
            "confusion": m.confusion(d["pred"], d["gold"], labels)}


def by_accuracy(members: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Members best first; those that answered nothing last."""
    return sorted(members.items(), key=lambda kv: -(kv[1]["accuracy"] if kv[1]["accuracy"] is not None else -1))


def failed_cell(d: dict[str, Any]) -> str:
    return failed_calls(d["failed"], d["error"])


def reaggregate(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Every aggregator fitted (crowd-kit) and applied to the same stored votes; no model is called."""
    by_item = {str(r["id"]): r for r in records if r["annotation"]}
    triples = [(i, v["member"], v["label"]) for i, r in by_item.items() for v in r["annotation"]["votes"]
               if v["label"] is not None]
    out = {}
    for name in REGISTRY:
        agg = get_aggregator(name)
        started = time.perf_counter()
        params = agg.fit(FitData.of(triples, labels))
        pred, conf, gold = [], [], []
        for i, r in by_item.items():
            votes = [Vote.from_wire(v, len(labels)) for v in r["annotation"]["votes"]]
            dist = agg.posterior(votes, labels, params)
            best = pick(dist)
            pred.append(labels[best])
            conf.append(dist[best])
            gold.append(r["gold"])
        correct = [p == g for p, g in zip(pred, gold)]
        out[name] = {"accuracy": m.accuracy(pred, gold), "macro_f1": m.macro_f1(pred, gold, labels),
                     "ece": m.ece(conf, correct), "fit_s": time.perf_counter() - started}
    return out


def diversity(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """How much the members' mistakes overlap, and what each adds.

    `error_correlation`: per pair of members, the correlation of their error indicators on the items both
    answered (1: they are wrong on the same items; a crowd of such members is one member). `contribution`:
    accuracy of `auto` with each member minus without it (positive: it helps), with a 95% interval, fitted on the
    gold of the dev half (split by id) with the gateway's own refit and scored on the test half.
    """
    items = {str(r["id"]): r for r in records if r["annotation"]}
    members = sorted({v["member"] for r in items.values() for v in r["annotation"]["votes"]})
    wrong = {m: {i: v["label"] != r["gold"] for i, r in items.items() for v in r["annotation"]["votes"]
                 if v["member"] == m and v["label"] is not None} for m in members}
    correlation = {}
    for n, a in enumerate(members):
        for b in members[n + 1:]:
            both = sorted(set(wrong[a]) & set(wrong[b]))
            correlation[f"{a} / {b}"] = _pearson([wrong[a][i] for i in both], [wrong[b][i] for i in both])
    dev = {i: r["gold"] for i, r in items.items() if split_of(i) == "dev"}
    test = {i: r["gold"] for i, r in items.items() if split_of(i) == "test"}
    with_all, contribution = contributions({i: r["annotation"]["votes"] for i, r in items.items()}, labels, dev, test)
    return {"error_correlation": correlation, "auto_accuracy": with_all,
            "contribution": {name: {**dataclasses.asdict(c), "verdict": c.verdict} for name, c in contribution.items()},
            "gold": len(dev), "test": len(test)}


def _pearson(x: Sequence[bool], y: Sequence[bool]) -> float | None:
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    var = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return round(cov / var, 6) if var else None


def print_diversity(mix: dict[str, Any]) -> None:
    if not mix:
        return
    print("\nError correlation on gold (1: wrong on the same items):\n| pair | correlation |\n|---|---|")
    for pair, value in sorted(mix["error_correlation"].items(), key=lambda kv: -(kv[1] or 0)):
        print(f"| {pair} | {'-' if value is None else f'{value:.2f}'} |")
    print_contributions(mix["auto_accuracy"], {name: Contribution(c["value"], c["low"], c["high"], c["items"])
                                                for name, c in mix["contribution"].items()}, mix["gold"], mix["test"])


def plot(summary: dict[str, Any], records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """A reliability diagram and a cost-accuracy plot, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["annotation"]]
    conf = [r["annotation"]["confidence"] for r in done]
    correct = [r["annotation"]["label"] == r["gold"] for r in done]
    xs, ys, ns = [], [], []
    for b in range(10):
        idx = [i for i, c in enumerate(conf) if b / 10 < c <= (b + 1) / 10]
        if idx:
            xs.append(sum(conf[i] for i in idx) / len(idx))
            ys.append(sum(correct[i] for i in idx) / len(idx))
            ns.append(len(idx))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.scatter(xs, ys, s=[20 + n for n in ns], label="crowd (size = items)")
    ax.plot(xs, ys)
    ax.set(xlabel="confidence", ylabel="accuracy", title=f"Reliability (ECE {summary['ece']:.3f})", xlim=(0, 1),
           ylim=(0, 1))
    ax.legend(loc="upper left")
    paths = [out / "reliability.png"]
    fig.savefig(paths[0], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, d in summary["members"].items():
        ax.scatter(d["cost_per_1000"], d["accuracy"], label=name)
    ax.scatter(summary["cost_per_1000"], summary["accuracy"], marker="*", s=200, color="black", label="crowd")
    ax.set(xlabel="USD per 1,000 labels", ylabel="accuracy", title="Cost against accuracy")
    ax.legend(fontsize=7)
    paths.append(out / "cost_accuracy.png")
    fig.savefig(paths[1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def auroc_text(value: float, accuracy: float) -> str:
    """AUROC of confidence, or why there is none: it ranks right answers against wrong ones, so it needs both."""
    if not math.isnan(value):
        return f"{value:.3f}"
    return "- (every answer was right)" if accuracy == 1 else "- (every answer was wrong)" if accuracy == 0 else "-"


def print_report(summary: dict[str, Any], comparison: dict[str, dict[str, float]]) -> None:
    print(f"\nitems {summary['items']} (failed {summary['failed']})  accuracy {summary['accuracy']:.3f}  "
          f"macro-F1 {summary['macro_f1']:.3f}  ECE {summary['ece']:.3f}  Brier {summary['brier']:.3f}  "
          f"AUROC {auroc_text(summary['auroc'], summary['accuracy'])}")
    print(f"mean confidence {summary['mean_confidence']:.3f}  escalated {summary['escalation_rate']:.1%}  "
          f"review {summary['review_rate']:.1%}  cost per 1,000 labels ${summary['cost_per_1000']:.5f}")
    print("accuracy at coverage: " + ", ".join(f"{c:.0%}: {a:.3f}" for c, a in summary["accuracy_at_coverage"]))
    print("\n| member | accuracy of its answers | answered | failed calls | USD per 1,000 |\n|---|---|---|---|---|")
    for name, d in by_accuracy(summary["members"]):
        accuracy = "-" if d["accuracy"] is None else f"{d['accuracy']:.3f}"
        print(f"| {name} | {accuracy} | {d['answered']} | {failed_cell(d)} | {d['cost_per_1000']:.5f} |")
    print(f"| **crowd** | **{summary['accuracy']:.3f}** | {summary['items'] - summary['failed']} | "
          f"{summary['failed']} | {summary['cost_per_1000']:.5f} |")
    if (baseline := summary["baseline"]) is not None:
        print(f"| {Baseline(**baseline).describe()} | {baseline['accuracy']:.3f} | "
              f"{summary['items'] - summary['failed']} | - | 0 |")
    if comparison:
        print("\nOffline re-aggregation of the same votes:\n| aggregator | accuracy | macro-F1 | ECE | fit s |"
              "\n|---|---|---|---|---|")
        for name, d in comparison.items():
            print(f"| {name} | {d['accuracy']:.3f} | {d['macro_f1']:.3f} | {d['ece']:.3f} | {d['fit_s']:.2f} |")


def run(args: argparse.Namespace) -> int:
    """Label the dataset (or reload a run's votes), then score, re-aggregate and plot; usage errors exit 2."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.votes:
        records = [json.loads(line) for line in Path(args.votes).read_text().splitlines() if line.strip()]
        labels = args.labels.split(",") if args.labels else sorted({r["gold"] for r in records})
    else:
        rows = load_dataset(args.dataset, args.split, args.limit)
        labels = args.labels.split(",") if args.labels else sorted({r["label"] for r in rows})
        key = os.environ.get("CROWD_GATEWAY_API_KEY", "unused")
        with gateway_v1(args.gateway, args.config) as url:
            records = asyncio.run(annotate_items(url, key, args.ensemble, rows, labels, args.concurrency,
                                                 task=args.task, cache=args.cache))
        (out / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if not any(r["annotation"] for r in records):
        first = next((r["error"] for r in records), "no items")
        raise UsageError(f"no item was answered, so there is nothing to score (first error: {first})")
    # the label set in the order soft votes use it (a task's order, not sorted)
    labels = list(next(r["annotation"]["distribution"] for r in records if r["annotation"]))
    summary = summarize(records, labels)
    comparison = reaggregate(records, labels) if not args.no_reaggregate else {}
    mix = diversity(records, labels) if not args.no_reaggregate else {}
    (out / "summary.json").write_text(json.dumps({"summary": summary, "aggregators": comparison, "diversity": mix},
                                                 indent=2))
    print_report(summary, comparison)
    print_diversity(mix)
    for path in plot(summary, records, out):
        print(f"wrote {path}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate an ensemble on labeled data (rows: id, text, label)",
                       description=__doc__, formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="labeled rows: CSV, JSONL or JSONL.gz with id, text, label")
    src.add_argument("--votes", help="a previous run's annotations.jsonl: re-aggregate without calling models")
    p.add_argument("--ensemble", default="crowd", help="the gateway ensemble to evaluate (default: crowd)")
    p.add_argument("--split", choices=["dev", "test"], help="keep one half of the data, split by a hash of the id")
    p.add_argument("--limit", type=int, help="use the first N rows (after --split)")
    p.add_argument("--labels", help="comma-separated label set (default: the labels found in the data)")
    p.add_argument("--task", help="name a configured task instead of sending the label set (its prompt applies)")
    p.add_argument("--gateway", help="a running gateway's URL, with or without /v1 (default: embed one from --config)")
    p.add_argument("--config", help="gateway config: serve a gateway inside this command")
    p.add_argument("--concurrency", type=int, default=8, help="items in flight (default: 8)")
    p.add_argument("--out", default="out/eval", help="directory for annotations.jsonl, summary.json and plots")
    p.add_argument("--no-reaggregate", action="store_true", help="skip re-aggregating the votes with every aggregator")
    add_no_cache(p)
    p.set_defaults(func=run)
