"""Set one key of a YAML file's mapping in place: only that value's text changes, or one `key: value` is added.

Why not dump the round-tripped document: ruamel.yaml keeps comments, order and quoting, but writes a flow mapping
that the file wraps over several lines as one line, so one tuned knob rewrote 25 lines of deploy/local-pool.yaml
(issue 23). ruamel.yaml still does the parsing here: it says where each key and value of a mapping start, and
whether the mapping is a flow (`{...}`) or a block one; this module only splices text at those places.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

Locate = Callable[[Any], CommentedMap]
"""From the parsed document to the mapping to edit."""
_PLAIN = re.compile(r"[^,\]}#\s]+(?:[ \t]+[^,\]}#\s]+)*")
"""A plain scalar on one line, up to the next flow indicator or comment (the values set here are numbers)."""


def set_key(text: str, locate: Locate, key: str, value: str) -> str:
    """`text` with `key: value` (`value` is YAML text, a scalar or a flow collection) in the mapping `locate`
    finds: the key's scalar value replaced where it stands, or the key added as the mapping's last."""
    mapping = locate(YAML().load(text))
    lines = text.splitlines(keepends=True)
    if key in mapping:
        if isinstance(mapping[key], (dict, list)):
            raise ValueError(f"{key!r} holds a collection, not a value to set")
        row, col = mapping.lc.value(key)
        line = lines[row]
        quote = line[col] if line[col] in "'\"" else ""
        found = re.compile(f"{quote}[^{quote}]*{quote}").match(line, col) if quote else _PLAIN.match(line, col)
        if found is None:
            raise ValueError(f"cannot read the value of {key!r} on line {row + 1}")
        lines[row] = line[:col] + value + line[found.end():]
        return "".join(lines)
    if mapping.fa.flow_style():
        row, col = _closing_brace(lines, mapping.lc.line, mapping.lc.col)
        line = lines[row]
        lines[row] = f"{line[:col].rstrip()}{', ' if mapping else ''}{key}: {value}{line[col:]}"
        return "".join(lines)
    last = list(mapping)[-1]
    row, col = mapping.lc.key(last)
    end = _block_end(lines, row, col)
    lines.insert(end, f"{' ' * col}{key}: {value}\n")
    return "".join(lines)


def _closing_brace(lines: list[str], row: int, col: int) -> tuple[int, int]:
    """Where the flow mapping opening at (row, col) closes: brackets counted, quoted text skipped."""
    depth, quote = 0, ""
    for r in range(row, len(lines)):
        for c in range(col if r == row else 0, len(lines[r])):
            char = lines[r][c]
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return r, c
            elif char == "#" and (c == 0 or lines[r][c - 1] in " \t"):
                break
    raise ValueError(f"the flow mapping on line {row + 1} does not close")


def _block_end(lines: list[str], row: int, col: int) -> int:
    """The line after the block entry whose key is at (row, col): the first later line indented no deeper (comments
    and blank lines in between stay with what follows)."""
    end = row + 1
    for r in range(row + 1, len(lines)):
        stripped = lines[r].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(lines[r]) - len(lines[r].lstrip()) <= col:
            break
        end = r + 1
    return end
