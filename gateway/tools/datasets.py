"""The one row loader of the tools: CSV (with a header), JSONL and JSONL.gz files, row ids, and the stable
dev/test split by id, so that prompts and thresholds tuned on dev are never scored on the same items."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.tools import UsageError

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz"}


def file_format(path: Path) -> str:
    """`csv`, `jsonl` or `jsonl.gz`, from the file's name."""
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise UsageError(f"{path}: expected a .csv, .jsonl or .jsonl.gz file")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV (with header) or JSONL (one object per line, gzipped or not) file."""
    path = Path(path)
    fmt = file_format(path)
    try:
        if fmt == "jsonl.gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return _objects(fh, path)
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh)) if fmt == "csv" else _objects(fh, path)
    except OSError as exc:  # a missing file, and a .gz that is not gzip (no strerror)
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _objects(lines: Iterable[str], path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not valid JSONL ({exc})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{number}: expected a JSON object")
        rows.append(row)
    return rows


def row_ids(rows: list[dict[str, Any]], id_column: str = "id") -> list[str]:
    """The id column when the input has it, else the 1-based row number; unique, since the gateway stores
    votes by item id and annotate resumes by it."""
    ids = [str(row[id_column]) if id_column in row else str(n) for n, row in enumerate(rows, start=1)]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise UsageError(f"column {id_column!r} has duplicate ids {dupes}: ids must be unique")
    return ids


def split_of(item_id: str) -> str:
    """`dev` or `test` by a hash of the id: the same on every run and machine, about half each."""
    return "dev" if hashlib.blake2b(item_id.encode(), digest_size=2).digest()[0] % 2 == 0 else "test"


def load_dataset(path: str | Path, split: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Labelled rows (text, label; an id to split by), one half of the split if asked, the first `limit`."""
    rows = read_rows(path)
    needed = ("text", "label", "id") if split else ("text", "label")
    for number, row in enumerate(rows, start=1):
        if missing := [key for key in needed if key not in row]:
            raise UsageError(f"{path}: row {number} has no {missing[0]!r} (labelled rows need "
                             f"{', '.join(needed)})")
    if split:
        rows = [row for row in rows if split_of(str(row["id"])) == split]
    return rows[:limit] if limit else rows
