"""`crowd-gateway annotate`: label every row of a CSV or JSONL file through the gateway.

Rows are written to OUT as they are answered (flushed each time), so an interrupted run loses
nothing: the same command again skips the ids already in OUT. A row that fails is not written,
so the next run retries exactly the failed and the missing rows. The gateway is reached with the
official `openai` client, either at `--gateway URL` or embedded in this process from `--config`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PRED_COLUMNS = ("crowd_label", "crowd_confidence", "crowd_needs_review", "crowd_escalated", "crowd_agreement",
                "crowd_cost_usd", "crowd_votes")
"""Prefixed, so an input's own `label` (gold) column passes through next to the crowd's answer."""
ROWS_PER_CLIENT = 8


class UsageError(Exception):
    """A problem with the command line or the input file, reported in one line."""


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise UsageError(f"{path}: expected a .csv or .jsonl file")
    return suffix[1:]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (with header) or JSONL (one object per line) file."""
    fmt = _format(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            if fmt == "csv":
                return list(csv.DictReader(fh))
            rows = []
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise UsageError(f"{path}:{number}: expected a JSON object")
                    rows.append(row)
            return rows
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSONL ({exc})") from None


def row_ids(rows: list[dict[str, Any]], id_column: str) -> list[str]:
    """The id column when the input has it, else the 1-based row number; ids must be unique to resume by."""
    ids = [str(row[id_column]) if id_column in row else str(n) for n, row in enumerate(rows, start=1)]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise UsageError(f"column {id_column!r} has duplicate ids {dupes}: ids must be unique to resume by")
    return ids


def finished_ids(out: Path, id_column: str) -> set[str]:
    """Ids already in OUT; a last row cut short by a kill is dropped first, so it is redone, not corrupted."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        with out.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
    return {str(row.get(id_column)) for row in read_rows(out)}


class RowWriter:
    """Appends answered rows to OUT and flushes each, so a kill loses at most the row being written."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.fmt = _format(path)
        fresh = not path.exists() or path.stat().st_size == 0
        if self.fmt == "csv" and not fresh:
            with path.open(newline="", encoding="utf-8") as fh:
                columns = next(csv.reader(fh))
        self.fh: IO[str] = path.open("a", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.fh, columns, extrasaction="ignore") if self.fmt == "csv" else None
        if self.csv and fresh:
            self.csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.csv:
            self.csv.writerow({k: json.dumps(v) if isinstance(v, (list, dict, bool)) else v for k, v in row.items()})
        else:
            self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


@dataclass
class Tally:
    """Running figures shown in the progress bar's postfix."""

    answered: int = 0
    agreement: float = 0.0
    cost_usd: float = 0.0
    review: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, annotation: dict[str, Any], cost: float) -> None:
        self.answered += 1
        self.agreement += annotation.get("agreement", 0.0)
        self.cost_usd += cost
        self.review += bool(annotation.get("needs_review"))

    def postfix(self) -> str:
        agree = self.agreement / self.answered if self.answered else 0.0
        return (f"agree={agree:.2f} cost=${self.cost_usd:.4f} review={self.review}"
                + (f" failed={len(self.failures)}" if self.failures else ""))


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


@contextlib.asynccontextmanager
async def gateway_url(args: argparse.Namespace) -> AsyncIterator[str]:
    """`--gateway URL` as given, or a gateway from `--config` served in this process on a free port."""
    if args.gateway:
        yield _base_url(args.gateway)
        return
    import uvicorn

    from gateway.app import create_app
    from gateway.config import load_config

    class Embedded(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # Ctrl+C belongs to the annotate command, which stops this server on its way out

    app = create_app(load_config(args.config))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Embedded(uvicorn.Config(app, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise UsageError("the embedded gateway did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        await task


def _output_row(row: dict[str, Any], id_column: str, item_id: str, annotation: dict[str, Any],
                cost: float) -> dict[str, Any]:
    return {**row, id_column: item_id, "crowd_label": annotation["label"],
            "crowd_confidence": annotation["confidence"], "crowd_needs_review": annotation["needs_review"],
            "crowd_escalated": annotation["escalated"], "crowd_agreement": annotation.get("agreement"),
            "crowd_cost_usd": cost, "crowd_votes": annotation["votes"]}


async def annotate(args: argparse.Namespace) -> int:
    import openai
    from tqdm import tqdm

    source, out = Path(args.input), Path(args.out)
    rows = read_rows(source)
    if rows and args.text_column not in rows[0]:
        raise UsageError(f"{source} has no column {args.text_column!r} (columns: {sorted(rows[0])})")
    ids = row_ids(rows, args.id_column)
    done = finished_ids(out, args.id_column)
    todo = iter([(i, row) for i, row in zip(ids, rows) if i not in done])
    columns = ([args.id_column] if rows and args.id_column not in rows[0] else []) + list(rows[0] if rows else [])
    writer = RowWriter(out, columns + [c for c in PRED_COLUMNS if c not in columns])
    spec: dict[str, Any] = ({"labels": [label.strip() for label in args.labels.split(",")]} if args.labels
                            else {"task": args.task})
    tally = Tally()
    bar = tqdm(total=len(rows), initial=sum(1 for i in ids if i in done), unit="item",
               desc="annotate", dynamic_ncols=True)

    async def work(client: openai.AsyncOpenAI) -> None:
        for item_id, row in todo:
            try:
                reply = await client.chat.completions.create(
                    model=args.ensemble, messages=[{"role": "user", "content": str(row[args.text_column])}],
                    extra_body={**spec, "item_id": item_id})
            except openai.APIError as exc:
                tally.failures.append((item_id, getattr(exc, "message", str(exc))))
            else:
                annotation = (reply.model_extra or {}).get("annotation")
                if annotation is None:
                    raise UsageError(f"{args.ensemble!r} answered without an annotation block: name an ensemble")
                cost = (reply.usage.model_extra or {}).get("cost_usd", 0.0) if reply.usage else 0.0
                writer.write(_output_row(row, args.id_column, item_id, annotation, cost))
                tally.add(annotation, cost)
                bar.update(1)
            bar.set_postfix_str(tally.postfix(), refresh=False)

    try:
        async with gateway_url(args) as base_url, contextlib.AsyncExitStack() as clients:
            # one small client per ROWS_PER_CLIENT rows in flight: httpcore's pool scans every connection
            # for every queued request, so one pool of 64 costs the client several ms of CPU per row
            pool = [await clients.enter_async_context(openai.AsyncOpenAI(
                base_url=base_url, api_key=args.api_key, max_retries=args.retries, timeout=args.timeout))
                for _ in range(-(-args.concurrency // ROWS_PER_CLIENT))]
            await asyncio.gather(*(work(pool[n // ROWS_PER_CLIENT]) for n in range(args.concurrency)))
    finally:
        bar.close()
        writer.close()
    print(f"{len(rows) - len(tally.failures)}/{len(rows)} rows in {out}; this run: {tally.answered} answered, "
          f"cost ${tally.cost_usd:.6f}, {tally.review} need review", file=sys.stderr)
    if tally.failures:
        for item_id, message in tally.failures[:5]:
            print(f"  failed {item_id}: {message}", file=sys.stderr)
        print(f"{len(tally.failures)} rows failed and were not written: run the same command again to retry "
              f"them", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if bool(args.labels) == bool(args.task):
            raise UsageError("give exactly one of --labels a,b,c or --task NAME")
        if bool(args.gateway) == bool(args.config):
            raise UsageError("give exactly one of --gateway URL or --config FILE (embedded gateway)")
        return asyncio.run(annotate(args))
    except UsageError as exc:
        print(f"crowd-gateway annotate: {exc}", file=sys.stderr)
        return 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("annotate", help="label a CSV/JSONL file through the gateway (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="INPUT.csv or INPUT.jsonl")
    p.add_argument("--out", required=True, help="OUT.csv or OUT.jsonl (appended to; rows already in it are skipped)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--id-column", default="id", help="unique row id (default: id; row numbers if absent)")
    p.add_argument("--labels", help="label set, comma-separated")
    p.add_argument("--task", help="a task named in the gateway's config (its label set and prompt)")
    p.add_argument("--ensemble", default="crowd", help="the gateway ensemble that labels the rows")
    p.add_argument("--gateway", help="gateway URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--config", help="gateway config: start a gateway inside this command")
    p.add_argument("--concurrency", type=int, default=16, help="rows in flight")
    p.add_argument("--api-key", default=os.environ.get("CROWD_GATEWAY_API_KEY", "unused"))
    p.add_argument("--retries", type=int, default=2, help="retries of a row on 429/5xx/connection errors")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.set_defaults(func=run)
