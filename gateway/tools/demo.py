"""`crowd-gateway demo`: the main job end to end on real small models on CPU.

Starts the local pool (vLLM's CPU build serving SmolLM2 and Gemma 3), starts the
gateway with the in-memory store, labels the bundled sample through the official `openai` client
with a progress bar, prints a table (each worker's accuracy, the crowd's, confidence against
accuracy, cost, wall time), and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from gateway.config import load_config
from gateway.tools import HelpFormatter
from gateway.tools.datasets import load_dataset
from gateway.tools.embedded import embedded_gateway
from gateway.tools.baseline import Baseline
from gateway.tools.evaluate import annotate_items, by_accuracy, failed_cell, summarize
from gateway.tools.pool import running_pool
from gateway.tools.pool_status import pool_status

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "deploy" / "local-pool.yaml"
DEFAULT_DATA = ROOT / "gateway" / "data" / "sentiment_sample.jsonl"
DEFAULT_GOLD = ROOT / "gateway" / "data" / "sentiment_dev.jsonl"


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ensemble = next(e for e in config.ensembles if e.name == args.ensemble)
    rows = load_dataset(args.data, limit=args.limit)
    labels = sorted({r["label"] for r in rows})
    started = time.monotonic()
    with running_pool(config):
        ready = time.monotonic() - started
        print(f"pool ready in {ready:.0f} s", flush=True)
        with embedded_gateway(str(args.config)) as url:
            teaching = time.monotonic()
            chosen = teach(url, args, labels) if args.gold else None
            annotating = time.monotonic()
            records = asyncio.run(annotate_items(url, "demo", args.ensemble, rows, labels, args.concurrency,
                                                 desc=f"labelling with {len(ensemble.members)} workers",
                                                 task=args.task))
            labelling = time.monotonic() - annotating
        caches = [(s.name, s.prefix_cache) for s in pool_status(config) if s.prefix_cache is not None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(records, labels)
    print_table(summary, ensemble.name, chosen or ensemble.aggregator, len(rows))
    print(f"wall time {time.monotonic() - started:.0f} s: pool start {ready:.0f} s, gold and refit "
          f"{annotating - teaching:.0f} s, labelling {labelling:.0f} s ({len(rows) / labelling:.1f} items/s)")
    if caches:
        print("vLLM prefix cache hits since each engine started: "
              + ", ".join(f"{name} {cache.describe()}" for name, cache in caches))
    print(f"votes saved to {out / 'annotations.jsonl'}: compare every aggregator on them with "
          f"`crowd-gateway eval --votes {out / 'annotations.jsonl'}`")
    return 0 if summary["failed"] < len(rows) else 1


def teach(url: str, args: argparse.Namespace, labels: list[str]) -> str | None:
    """Label the gold items, send their labels as gold feedback and refit: what the project recommends before a
    job, so the crowd's aggregator is chosen on gold and its confidence is calibrated. Returns auto's choice."""
    import httpx

    gold = load_dataset(args.gold)
    asyncio.run(annotate_items(url, "demo", args.ensemble, gold, labels, args.concurrency,
                               desc=f"{len(gold)} gold items", task=args.task))
    with httpx.Client(base_url=url, timeout=300) as client:
        for row in gold:
            client.post("/annotations/feedback", json={"item_id": str(row["id"]), "label": row["label"],
                                                       "source": "gold", "task": args.task}).raise_for_status()
        client.post("/annotations/refit").raise_for_status()
        published = client.get("/annotations/params").json()["data"]
    aggregator = next(e.aggregator for e in load_config(args.config).ensembles if e.name == args.ensemble)
    mine = [p for p in published if p["schema"] == args.task and p["aggregator"] == aggregator]
    for p in mine:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(((k, v["accuracy"]) for k, v in p["candidates"].items()),
                                                                  key=lambda kv: -kv[1]))
        print(f"refit on {p['gold']} gold items: {p['aggregator']} chose {p['chosen']}"
              + (f" (cross-validated accuracy: {scores})" if scores else ""), flush=True)
    return next((f"{p['aggregator']}: {p['chosen']}" for p in mine if p["chosen"] != p["aggregator"]), None)


def print_table(summary: dict, ensemble: str, aggregator: str, n: int) -> None:
    print(f"\n{n} labeled sentences (UCI Sentiment Labelled Sentences, CC BY 4.0), ensemble '{ensemble}' "
          f"({aggregator})\n")
    print("| worker | accuracy | answered | failed calls | USD per 1,000 labels |\n|---|---|---|---|---|")
    for name, d in by_accuracy(summary["members"]):
        accuracy = "-" if d["accuracy"] is None else f"{d['accuracy']:.3f}"
        print(f"| {name} | {accuracy} | {d['answered']} | {failed_cell(d)} | {d['cost_per_1000']:.6f} |")
    answered = summary["items"] - summary["failed"]
    print(f"| **crowd** | **{summary['accuracy']:.3f}** | {answered} | {summary['failed']} | "
          f"{summary['cost_per_1000']:.6f} |")
    if (baseline := summary["baseline"]) is not None:
        print(f"| {Baseline(**baseline).describe()} | {baseline['accuracy']:.3f} | {answered} | - | 0 |")
    print(f"\nmean confidence {summary['mean_confidence']:.3f} against accuracy {summary['accuracy']:.3f} "
          f"(ECE {summary['ece']:.3f}); failed items {summary['failed']}")
    print(f"total cost ${summary['cost_per_1000'] * summary['items'] / 1000:.6f}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="label a bundled sample with real small models on CPU, end to end",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="config with the pool and the ensemble "
                                                                  "(default: deploy/local-pool.yaml)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="labeled rows: CSV, JSONL or JSONL.gz with id, text, "
                                                             "label (default: the bundled sample)")
    p.add_argument("--ensemble", default="crowd", help="the ensemble that labels the rows (default: crowd)")
    p.add_argument("--limit", type=int, help="use the first N rows")
    p.add_argument("--gold", default=str(DEFAULT_GOLD), help="labeled rows sent as gold feedback before the job, "
                   "so the aggregator is chosen and calibrated on them ('' to skip; default: the 40 dev sentences)")
    p.add_argument("--task", default="sentiment", help="the configured task whose prompt the workers use "
                   "(default: sentiment)")
    p.add_argument("--concurrency", type=int, default=16, help="items in flight (default: 16; vLLM batches them)")
    p.add_argument("--out", default="out/demo", help="directory for annotations.jsonl (default: out/demo)")
    p.set_defaults(func=run)
