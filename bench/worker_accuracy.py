"""Per-worker accuracy and throughput of the config's members on a labeled JSONL file.

Why: a crowd is only as good as its workers, and tiny models swing from chance to near perfect with
the prompt template; templates are tuned on the dev slice with this script, never on the evaluation
files. Bodies are built by the gateway's own dialect code, so what is measured is what is served.
Usage: python bench/worker_accuracy.py --config deploy/local-pool.yaml \
           --items gateway/data/sentiment_dev.jsonl [--members a,b] [--task sentiment] [--together]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from ensembles.labels import LabelSet
from gateway.asking.dialects import shape
from gateway.config import Config, Member, load_config
from gateway.task import AnnotationTask


@dataclass
class Score:
    member: str
    correct: int
    total: int
    failed: int
    seconds: float
    predicted: Counter[str]
    prompt_tokens: int

    def line(self) -> str:
        dist = " ".join(f"{k}={v}" for k, v in sorted(self.predicted.items()))
        return (f"{self.member:14s} acc {self.correct / self.total:5.3f} ({self.correct}/{self.total})  "
                f"{self.total / self.seconds:5.2f} req/s  failed {self.failed}  "
                f"prompt_tokens/item {self.prompt_tokens / max(self.total - self.failed, 1):5.1f}  {dist}")


def answer_text(reply: dict) -> str:
    choice = reply["choices"][0]
    return (choice.get("text") if "text" in choice else choice["message"]["content"]) or ""


async def score(client: httpx.AsyncClient, member: Member, items: list[dict], labels: tuple[str, ...],
                concurrency: int) -> Score:
    slots = asyncio.Semaphore(concurrency)
    predicted: Counter[str] = Counter()
    tokens = 0
    failed = 0

    async def one(item: dict) -> bool:
        nonlocal tokens, failed
        task = AnnotationTask(kind="chat", label_set=LabelSet.matching(labels, labels), text=item["text"], body={},
                              template=None, schema="sentiment", item_id=item["id"])
        path, body = shape(member, task)
        async with slots:
            resp = await client.post(member.base_url + path, content=body,
                                     headers={"Content-Type": "application/json"})
        if resp.status_code != 200:
            failed += 1
            predicted[f"http{resp.status_code}"] += 1
            return False
        reply = resp.json()
        tokens += reply.get("usage", {}).get("prompt_tokens", 0)
        label = answer_text(reply).strip()
        predicted[label if label in labels else "other"] += 1
        return label == item["label"]

    began = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in items))
    return Score(member.name, sum(results), len(items), failed, time.perf_counter() - began, predicted, tokens)


async def main_async(config: Config, items: list[dict], names: list[str], labels: tuple[str, ...],
                     together: bool) -> None:
    """One member after another (each alone on the CPU), or all at once as a crowd fan-out would."""
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        members = [config.member(name) for name in names]
        if together:
            began = time.perf_counter()
            results = await asyncio.gather(*(score(client, m, items, labels, min(m.max_concurrency, 4))
                                             for m in members))
            print("\n".join(r.line() for r in results))
            print(f"all together: {len(items) / (time.perf_counter() - began):.2f} items/s through every member")
            return
        for member in members:
            print((await score(client, member, items, labels, min(member.max_concurrency, 4))).line(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="deploy/local-pool.yaml")
    parser.add_argument("--items", type=Path, default=Path("gateway/data/sentiment_dev.jsonl"))
    parser.add_argument("--members", help="comma-separated member names (default: all)")
    parser.add_argument("--task", default="sentiment", help="configured task whose labels to use")
    parser.add_argument("--together", action="store_true", help="run the members concurrently")
    args = parser.parse_args()
    config = load_config(args.config)
    task = config.task(args.task)
    if task is None:
        raise SystemExit(f"no task {args.task!r} in {args.config}")
    items = [json.loads(line) for line in args.items.read_text().splitlines()]
    names = args.members.split(",") if args.members else [m.name for m in config.members]
    asyncio.run(main_async(config, items, names, tuple(task.labels), args.together))


if __name__ == "__main__":
    main()
