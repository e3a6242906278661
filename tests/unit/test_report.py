"""`crowd-gateway report` on a small OUT file whose figures are worked out by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.tools.report import Item, load_items, summarise

# (m1, m2, m3 votes), crowd label, gold; m2 abstains on the third item
ITEMS = [(("a", "a", "b"), "a", "a"), (("b", "b", "b"), "b", "a"), (("a", None, "a"), "a", "a"),
         (("b", "a", "b"), "b", "b")]


def rows() -> list[dict[str, Any]]:
    out = []
    for n, (votes, crowd, gold) in enumerate(ITEMS):
        out.append({"id": str(n), "text": f"t{n}", "label": gold, "crowd_label": crowd,
                    "crowd_confidence": 0.55 + n / 10, "crowd_needs_review": n == 0, "crowd_escalated": n == 1,
                    "crowd_agreement": 1.0, "crowd_cost_usd": 0.003,
                    "crowd_votes": [{"member": f"m{i + 1}", "label": v, "cost_usd": 0.001}
                                    for i, v in enumerate(votes)]})
    return out


@pytest.fixture(params=["csv", "jsonl"])
def out_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"out.{request.param}"
    with path.open("w", newline="") as fh:
        if request.param == "jsonl":
            fh.writelines(json.dumps(row) + "\n" for row in rows())
        else:  # as `annotate` writes CSV: JSON for lists and booleans
            writer = csv.DictWriter(fh, list(rows()[0]))
            writer.writeheader()
            for row in rows():
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, bool)) else v for k, v in row.items()})
    return path


def test_figures_match_the_hand_computation(out_file: Path) -> None:
    s = summarise(load_items(out_file, "label"))
    assert s["items"] == 4 and s["labels"] == {"a": 2, "b": 2}
    assert s["confidence_hist"] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert s["pairwise"][("m1", "m2")] == (pytest.approx(2 / 3), 3)
    assert s["pairwise"][("m1", "m3")] == (pytest.approx(3 / 4), 4)
    assert s["pairwise"][("m2", "m3")] == (pytest.approx(1 / 3), 3)
    assert s["fleiss_kappa"] == pytest.approx(59 / 180)  # P = 2/3, Pe = 61/121
    assert s["with_crowd"] == {"m1": 1.0, "m2": pytest.approx(2 / 3), "m3": 0.75}
    assert (s["escalated"], s["needs_review"]) == (1, 1)
    assert s["cost_usd"] == pytest.approx(0.012) and s["member_cost_usd"]["m2"] == pytest.approx(0.004)
    gold = s["gold"]
    assert gold["accuracy"] == 0.75 and gold["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    # m2 answered 3 of the 4 items (it abstained on the third) and got 1 of those right
    assert {m: v["accuracy"] for m, v in gold["members"].items()} == {"m1": 0.75, "m2": pytest.approx(1 / 3),
                                                                       "m3": 0.5}
    assert gold["members"]["m2"]["coverage"] == 0.75


def test_cli_prints_tables_and_writes_plots(out_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(out_file), "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "label distribution" in text and "Fleiss' kappa 0.328" in text and "m1 / m3" in text
    assert "against gold (4 items)" in text and "macro-F1" in text and "0.733" in text
    for name in ("labels.png", "confidence.png", "agreement.png", "accuracy.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_without_gold_there_is_no_accuracy(out_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(out_file), "--gold-column", "none"]) == 0
    text = capsys.readouterr().out
    assert "against gold" not in text and "label distribution" in text


def test_a_file_that_is_not_an_out_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.csv").write_text("id,text\n1,a\n")
    assert main(["report", str(tmp_path / "x.csv")]) == 2
    assert "no crowd_label" in capsys.readouterr().err


def test_member_accuracy_counts_only_the_rows_it_answered() -> None:
    """Issue 14: a member asked on 19 of 300 rows, right on all 19, was shown 19/300 = 0.063."""
    items = [Item(label="a", confidence=0.9, needs_review=False, escalated=False, cost_usd=0.0,
                  votes={"often": "a", **({"rare": "a"} if n < 19 else {})}, vote_costs={}, gold="a", errors={})
             for n in range(300)]
    members = summarise(items)["gold"]["members"]
    assert members["rare"] == {"accuracy": 1.0, "coverage": pytest.approx(19 / 300)}
    assert members["often"] == {"accuracy": 1.0, "coverage": 1.0}


def test_failed_calls_are_shown_apart_from_wrong_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23: a member whose every call was refused showed coverage 0.000 without a reason."""
    refused = {"member": "base", "label": None, "error": "HTTP 400: no chat template", "cost_usd": 0.0}
    rows = [{"id": str(n), "label": "a", "crowd_label": "a", "crowd_confidence": 0.9,
             "crowd_votes": [{"member": "smol", "label": "a", "cost_usd": 0.0}, refused]} for n in range(4)]
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    base = next(line for line in printed.splitlines() if line.split()[:2] == ["base", "-"])
    assert base.split()[:5] == ["base", "-", "0.000000", "-", "0.000"]  # no agreement, no accuracy, no coverage
    assert base.endswith("4 (HTTP 400: no chat template)")  # ... and why
    assert "always 'a' (most frequent label)     1.000" in printed
