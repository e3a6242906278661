"""`crowd-gateway eval`: run labeled data through an ensemble and report quality, calibration and cost.

It also re-aggregates the collected votes offline with every aggregator (`--votes FILE` reuses a
previous run's votes without calling any model), so users can compare algorithms on their own data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ensembles import metrics as m
from ensembles.aggregators import REGISTRY, get_aggregator, pick
from ensembles.votes import Vote


def split_of(item_id: str) -> str:
    """A stable dev/test split by id, so prompts tuned on dev are never scored on the same items."""
    return "dev" if hashlib.blake2b(item_id.encode(), digest_size=2).digest()[0] % 2 == 0 else "test"


def load_dataset(path: str | Path, split: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if split:
        rows = [r for r in rows if split_of(str(r["id"])) == split]
    return rows[:limit] if limit else rows


@contextlib.contextmanager
def embedded_gateway(config: str, port: int | None = None, log: Path | None = None) -> Iterator[str]:
    """Start `crowd-gateway serve` for `config` on a free port (its output appended to `log` if given);
    yields its /v1 URL and stops it after."""
    import socket
    import urllib.request

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "crowd-gateway"
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("ab")) if log is not None else None
        proc = subprocess.Popen([str(exe), "serve", "--config", config, "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the embedded gateway exited with {proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the embedded gateway did not start within 60 s") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def annotate_items(base_url: str, api_key: str, ensemble: str, rows: Sequence[dict[str, Any]],
                         labels: Sequence[str], concurrency: int = 8, desc: str = "annotating") -> list[dict[str, Any]]:
    """Label every row through the gateway with the official client; failures are kept, not raised."""
    from openai import APIError, AsyncOpenAI
    from tqdm import tqdm

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(rows), desc=desc, unit="item", dynamic_ncols=True)
    right = cost = 0.0

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal right, cost
        async with gate:
            try:
                r = await client.chat.completions.create(
                    model=ensemble, messages=[{"role": "user", "content": row["text"]}],
                    extra_body={"labels": list(labels), "item_id": str(row["id"])})
                ann, item_cost, error = r.model_extra["annotation"], r.usage.model_extra["cost_usd"], None
            except APIError as exc:
                ann, item_cost, error = None, 0.0, str(exc)
        right += bool(ann and ann["label"] == row["label"])
        cost += item_cost
        bar.update(1)
        bar.set_postfix(acc=f"{right / bar.n:.3f}", cost=f"${cost:.5f}")
        return {"id": row["id"], "text": row["text"], "gold": row["label"], "annotation": ann, "cost_usd": item_cost,
                "error": error}

    try:
        return list(await asyncio.gather(*(one(r) for r in rows)))
    finally:
        bar.close()
        await client.close()


def summarize(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    done = [r for r in records if r["annotation"]]
    gold = [r["gold"] for r in done]
    pred = [r["annotation"]["label"] for r in done]
    conf = [r["annotation"]["confidence"] for r in done]
    correct = [p == g for p, g in zip(pred, gold)]
    members: dict[str, dict[str, Any]] = defaultdict(lambda: {"pred": [], "gold": [], "cost": 0.0})
    for r in done:
        for v in r["annotation"]["votes"]:
            members[v["member"]]["pred"].append(v["label"])
            members[v["member"]]["gold"].append(r["gold"])
            members[v["member"]]["cost"] += v["cost_usd"]
    per_member = {name: {"accuracy": m.accuracy(d["pred"], d["gold"]), "answered": len(d["pred"]),
                         "cost_per_1000": 1000 * d["cost"] / len(d["pred"]),
                         "confusion": m.confusion(d["pred"], d["gold"], labels)} for name, d in members.items()}
    total_cost = sum(r["cost_usd"] for r in records)
    return {
        "items": len(records), "failed": len(records) - len(done), "accuracy": m.accuracy(pred, gold),
        "macro_f1": m.macro_f1(pred, gold, labels), "ece": m.ece(conf, correct),
        "brier": m.brier([r["annotation"]["distribution"] for r in done], gold), "auroc": m.auroc(conf, correct),
        "mean_confidence": sum(conf) / len(conf) if conf else float("nan"),
        "accuracy_at_coverage": m.coverage_curve(conf, correct) if conf else [],
        "escalation_rate": sum(r["annotation"]["escalated"] for r in done) / len(done) if done else 0.0,
        "review_rate": sum(r["annotation"]["needs_review"] for r in done) / len(done) if done else 0.0,
        "cost_per_1000": 1000 * total_cost / len(records) if records else 0.0, "members": per_member,
    }


def reaggregate(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Every aggregator fitted (crowd-kit) and applied to the same stored votes; no model is called."""
    by_item = {str(r["id"]): r for r in records if r["annotation"]}
    triples = [(i, v["member"], v["label"]) for i, r in by_item.items() for v in r["annotation"]["votes"]
               if v["label"] is not None]
    out = {}
    for name in REGISTRY:
        agg = get_aggregator(name)
        started = time.perf_counter()
        params = agg.fit(triples, labels)
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


def print_report(summary: dict[str, Any], comparison: dict[str, dict[str, float]]) -> None:
    print(f"\nitems {summary['items']} (failed {summary['failed']})  accuracy {summary['accuracy']:.3f}  "
          f"macro-F1 {summary['macro_f1']:.3f}  ECE {summary['ece']:.3f}  Brier {summary['brier']:.3f}  "
          f"AUROC {summary['auroc']:.3f}")
    print(f"mean confidence {summary['mean_confidence']:.3f}  escalated {summary['escalation_rate']:.1%}  "
          f"review {summary['review_rate']:.1%}  cost per 1,000 labels ${summary['cost_per_1000']:.5f}")
    print("accuracy at coverage: " + ", ".join(f"{c:.0%}: {a:.3f}" for c, a in summary["accuracy_at_coverage"]))
    print("\n| member | accuracy | answered | USD per 1,000 |\n|---|---|---|---|")
    for name, d in sorted(summary["members"].items(), key=lambda kv: -kv[1]["accuracy"]):
        print(f"| {name} | {d['accuracy']:.3f} | {d['answered']} | {d['cost_per_1000']:.5f} |")
    if comparison:
        print("\nOffline re-aggregation of the same votes:\n| aggregator | accuracy | macro-F1 | ECE | fit s |"
              "\n|---|---|---|---|---|")
        for name, d in comparison.items():
            print(f"| {name} | {d['accuracy']:.3f} | {d['macro_f1']:.3f} | {d['ece']:.3f} | {d['fit_s']:.2f} |")


def run(args: argparse.Namespace) -> int:
    if not args.votes and not (args.gateway or args.config):
        print("crowd-gateway eval: pass --gateway URL (a running gateway) or --config FILE (start one)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.votes:
        records = [json.loads(line) for line in Path(args.votes).read_text().splitlines() if line.strip()]
        labels = args.labels.split(",") if args.labels else sorted({r["gold"] for r in records})
    else:
        rows = load_dataset(args.dataset, args.split, args.limit)
        labels = args.labels.split(",") if args.labels else sorted({r["label"] for r in rows})
        key = os.environ.get("CROWD_GATEWAY_API_KEY", "unused")
        with contextlib.ExitStack() as stack:
            url = args.gateway or stack.enter_context(embedded_gateway(args.config))
            records = asyncio.run(annotate_items(url, key, args.ensemble, rows, labels, args.concurrency))
        (out / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(records, labels)
    comparison = reaggregate(records, labels) if not args.no_reaggregate else {}
    (out / "summary.json").write_text(json.dumps({"summary": summary, "aggregators": comparison}, indent=2))
    print_report(summary, comparison)
    for path in plot(summary, records, out):
        print(f"wrote {path}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate an ensemble on labeled data (JSONL: id, text, label)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="labeled JSONL (.gz ok)")
    src.add_argument("--votes", help="a previous run's annotations.jsonl: re-aggregate without calling models")
    p.add_argument("--ensemble", default="crowd")
    p.add_argument("--split", choices=["dev", "test"], help="keep one half of the data, split by a hash of the id")
    p.add_argument("--limit", type=int)
    p.add_argument("--labels", help="comma-separated label set (default: the labels found in the data)")
    p.add_argument("--gateway", help="a running gateway's /v1 URL (default: start one from --config)")
    p.add_argument("--config", help="config for the embedded gateway")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out", default="out/eval")
    p.add_argument("--no-reaggregate", action="store_true")
    p.set_defaults(func=run)
