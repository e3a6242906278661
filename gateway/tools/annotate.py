"""`crowd-gateway annotate`: label every row of a CSV or JSONL (.gz) file through the gateway.

Rows are written to OUT as they are answered (flushed each time), so an interrupted run loses
nothing: the same command again skips the ids already in OUT. A row that fails is not written,
so the next run retries exactly the failed and the missing rows. The gateway is reached with the
official `openai` client, either at `--gateway URL` or embedded in this process from `--config`. Rows are
sent with `service_tier: "flex"` (job traffic): the gateway groups their one-pass prompts to each vLLM
member into shared calls, as it does for Batch API lines.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gateway.tools import HelpFormatter, UsageError, add_no_cache, usd
from gateway.tools.datasets import file_format, read_rows, row_ids
from gateway.tools.embedded import gateway_v1
from gateway.tools.labelling import Answer, label_items

PRED_COLUMNS = ("crowd_label", "crowd_confidence", "crowd_needs_review", "crowd_escalated", "crowd_agreement",
                "crowd_cost_usd", "crowd_votes")
"""Prefixed, so an input's own `label` (gold) column passes through next to the crowd's answer."""


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
        self.fmt = file_format(path)
        if self.fmt not in ("csv", "jsonl"):
            raise UsageError(f"{path}: OUT is appended to, so it must be a .csv or .jsonl file")
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
        return (f"agree={agree:.2f} cost={usd(self.cost_usd)} review={self.review}"
                + (f" failed={len(self.failures)}" if self.failures else ""))


def _output_row(row: dict[str, Any], id_column: str, item_id: str, annotation: dict[str, Any],
                cost: float) -> dict[str, Any]:
    return {**row, id_column: item_id, "crowd_label": annotation["label"],
            "crowd_confidence": annotation["confidence"], "crowd_needs_review": annotation["needs_review"],
            "crowd_escalated": annotation["escalated"], "crowd_agreement": annotation.get("agreement"),
            "crowd_cost_usd": cost, "crowd_votes": annotation["votes"]}


def run(args: argparse.Namespace) -> int:
    """Label the rows not yet in OUT; a UsageError becomes one line and exit 2 in `gateway.cli.main`."""
    from tqdm import tqdm

    if bool(args.labels) == bool(args.task):
        raise UsageError("give exactly one of --labels a,b,c or --task NAME")
    if bool(args.gateway) == bool(args.config):
        raise UsageError("give exactly one of --gateway URL or --config FILE (embedded gateway)")
    source, out = Path(args.input), Path(args.out)
    rows = read_rows(source)
    if rows and args.text_column not in rows[0]:
        raise UsageError(f"{source} has no column {args.text_column!r} (columns: {sorted(rows[0])})")
    ids = row_ids(rows, args.id_column)
    columns = ([args.id_column] if rows and args.id_column not in rows[0] else []) + list(rows[0] if rows else [])
    writer = RowWriter(out, columns + [c for c in PRED_COLUMNS if c not in columns])
    done = finished_ids(out, args.id_column)
    todo = [(i, row) for i, row in zip(ids, rows) if i not in done]
    spec: dict[str, Any] = ({"labels": [label.strip() for label in args.labels.split(",")]} if args.labels
                            else {"task": args.task})
    tally = Tally()
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="item", desc="annotate", dynamic_ncols=True)

    def answered(answer: Answer) -> None:
        item_id, row = todo[answer.index]
        if answer.annotation is None:
            tally.failures.append((item_id, answer.error or "failed"))
        else:
            writer.write(_output_row(row, args.id_column, item_id, answer.annotation, answer.cost_usd))
            tally.add(answer.annotation, answer.cost_usd)
            bar.update(1)
        bar.set_postfix_str(tally.postfix(), refresh=False)

    try:
        with gateway_v1(args.gateway, args.config) as base_url:
            asyncio.run(label_items(base_url, args.api_key, args.ensemble,
                                    [(item_id, str(row[args.text_column])) for item_id, row in todo], spec, answered,
                                    concurrency=args.concurrency, retries=args.retries, timeout=args.timeout,
                                    service_tier=args.service_tier, cache=args.cache))
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: {len(rows) - len(todo) + tally.answered}/{len(rows)} rows are in {out}; run the same "
              f"command to resume (rows already there are skipped)", file=sys.stderr)
        return 130
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser("annotate", help="label a CSV/JSONL file through the gateway (resumable)",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("input", help="INPUT.csv, INPUT.jsonl or INPUT.jsonl.gz")
    p.add_argument("--out", required=True, help="OUT.csv or OUT.jsonl (appended to; rows already in it are skipped)")
    p.add_argument("--text-column", default="text", help="column with the text to label (default: text)")
    p.add_argument("--id-column", default="id", help="unique row id (default: id; row numbers if absent)")
    p.add_argument("--labels", help="label set, comma-separated")
    p.add_argument("--task", help="a task named in the gateway's config (its label set and prompt)")
    p.add_argument("--ensemble", default="crowd", help="the gateway ensemble that labels the rows")
    p.add_argument("--gateway", help="gateway URL, with or without /v1, e.g. http://127.0.0.1:8080")
    p.add_argument("--config", help="gateway config: start a gateway inside this command")
    p.add_argument("--concurrency", type=int, default=16, help="rows in flight")
    p.add_argument("--api-key", default=os.environ.get("CROWD_GATEWAY_API_KEY", "unused"),
                   help="the gateway's API key (default: $CROWD_GATEWAY_API_KEY, else 'unused')")
    p.add_argument("--retries", type=int, default=2, help="retries of a row on 429/5xx/connection errors")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--service-tier", choices=("flex", "default"), default="flex",
                   help="flex (default): the rows are job traffic, and the gateway may group their calls to a "
                        "vLLM member (up to batches.grouping.max_wait_ms more latency per row); default: one "
                        "call per row and member, as an interactive request")
    add_no_cache(p)
    p.set_defaults(func=run)
