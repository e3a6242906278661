"""Setting one key of a YAML file in place (gateway/tools/yaml_edit.py): what `tune` writes into a config."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from gateway.tools.yaml_edit import set_key

POOL = Path(__file__).resolve().parents[2] / "deploy" / "local-pool.yaml"


def ensemble(name: str, section: str | None = None) -> Any:
    def locate(data: Any) -> Any:
        entry = next(e for e in data["ensembles"] if e["name"] == name)
        return entry[section] if section else entry
    return locate


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line.startswith(("- ", "+ "))]


def test_one_knob_of_the_shipped_pool_is_one_changed_line() -> None:
    """Issue 23: tune joined every wrapped flow mapping of deploy/local-pool.yaml: 25 changed lines for one knob."""
    text = POOL.read_text()
    tuned = set_key(text, ensemble("cascade", "routing"), "target", "0.95")
    assert changed_lines(text, tuned) == [
        "-      routing: {start: 2, target: 0.9, price_weight: 0}, quorum: 2, deadline_s: 120}",
        "+      routing: {start: 2, target: 0.95, price_weight: 0}, quorum: 2, deadline_s: 120}"]
    added = set_key(set_key(tuned, ensemble("crowd"), "routing", "{start: 3}"), ensemble("crowd", "routing"),
                    "target", "0.8")
    assert len(changed_lines(tuned, added)) == 2
    crowd = next(e for e in yaml.safe_load(added)["ensembles"] if e["name"] == "crowd")
    assert crowd["routing"] == {"start": 3, "target": 0.8}
    assert yaml.safe_load(added)["members"] == yaml.safe_load(text)["members"]


def test_block_mappings_keep_comments_and_take_a_new_key_after_their_last() -> None:
    text = "a:\n  b: '1'   # kept\n  c:\n    - x\n  # about d\nd: 2\n"
    assert set_key(text, lambda data: data["a"], "b", "7") == "a:\n  b: 7   # kept\n  c:\n    - x\n  # about d\nd: 2\n"
    assert set_key(text, lambda data: data["a"], "e", "3") == (
        "a:\n  b: '1'   # kept\n  c:\n    - x\n  e: 3\n  # about d\nd: 2\n")
