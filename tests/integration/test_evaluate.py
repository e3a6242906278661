"""`crowd-gateway eval`: metrics on known inputs, and a full run (the CLI and the gateway it calls over HTTP on
127.0.0.1, both in this process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ensembles import metrics as m
from gateway.cli import main
from gateway.tools.datasets import split_of
from gateway.tools.evaluate import auroc_text
from tests.harness import Upstream, free_port, member
from tests.harness.inprocess import InProcessGateway


def test_metrics_on_known_values() -> None:
    assert m.accuracy(["a", "b", "a"], ["a", "a", "a"]) == pytest.approx(2 / 3)
    assert m.ece([0.9, 0.9, 0.6, 0.6], [True, True, True, False]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    assert m.brier([{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}], ["a", "b"]) == pytest.approx(0.25)
    assert m.auroc([0.9, 0.8, 0.3], [True, True, False]) == 1.0
    assert m.coverage_curve([0.9, 0.5], [True, False], points=(0.5, 1.0)) == [(0.5, 1.0), (1.0, 0.5)]
    assert m.confusion(["a", None], ["a", "b"], ["a", "b"])["b"]["abstain"] == 1


def test_auroc_says_why_it_is_undefined() -> None:
    """Issue 23: `eval` printed `AUROC nan` when nothing was wrong."""
    assert auroc_text(m.auroc([0.9, 0.8], [True, True]), 1.0) == "- (every answer was right)"
    assert auroc_text(m.auroc([0.9, 0.8], [False, False]), 0.0) == "- (every answer was wrong)"
    assert auroc_text(m.auroc([0.9, 0.3], [True, False]), 0.5) == "1.000"


def test_split_is_stable_and_balanced() -> None:
    splits = [split_of(f"id-{i}") for i in range(1000)]
    assert splits == [split_of(f"id-{i}") for i in range(1000)]
    assert 400 < splits.count("dev") < 600


def test_eval_run_then_offline_reaggregation(upstream: Upstream, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             request: pytest.FixtureRequest) -> None:
    upstream.reset()
    rows = [{"id": f"r{i}", "text": f"ROW{i:02d}Z", "label": "positive" if i % 3 else "negative"} for i in range(30)]
    upstream.script("e1", keywords={r["text"]: r["label"] for r in rows})
    upstream.script("e2", keywords={r["text"]: r["label"] for r in rows[:20]}, answer="positive")
    upstream.script("e3", answer="positive")
    upstream.script("e4", fail=[400] * 30)  # refuses every call (issue 23: a base model asked for chat)
    members = [member(upstream, n, price=(1.0, 1.0)) for n in ("e1", "e2", "e3", "e4")]
    gw = InProcessGateway({"members": members, "ensembles": [{"name": "crowd", "members": ["e1", "e2", "e3", "e4"],
                                                              "quorum": 2}]}, port=free_port())
    request.addfinalizer(gw.close)  # served on 127.0.0.1 from this process
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    # the gateway's URL without /v1, as users type it (issue 14: every item failed, then eval crashed)
    code = main(["eval", "--dataset", str(data), "--gateway", gw.url, "--out", str(out)])  # the CLI, in this process
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["items"] == 30 and summary["summary"]["failed"] == 0
    assert summary["summary"]["members"]["e1"]["accuracy"] == 1.0
    assert summary["summary"]["members"]["e3"]["accuracy"] == pytest.approx(20 / 30)
    refused = summary["summary"]["members"]["e4"]
    assert (refused["accuracy"], refused["answered"], refused["failed"]) == (None, 0, 30), "failed, not wrong"
    assert refused["error"] == "HTTP 400: scripted failure 400"
    assert summary["summary"]["baseline"] == {"label": "positive", "accuracy": pytest.approx(20 / 30)}
    assert summary["summary"]["cost_per_1000"] == pytest.approx(1000 * 3 * 11 / 1e6)
    assert set(summary["aggregators"]) >= {"majority", "dawid_skene", "glad", "mace", "wawa"}
    mix = summary["diversity"]
    assert set(mix["contribution"]) == {"e1", "e2", "e3", "e4"} and set(mix["error_correlation"]) == {
        "e1 / e2", "e1 / e3", "e1 / e4", "e2 / e3", "e2 / e4", "e3 / e4"}
    assert mix["error_correlation"]["e1 / e2"] is None, "e1 is never wrong: no correlation to speak of"
    assert mix["contribution"]["e1"]["value"] >= mix["contribution"]["e3"]["value"], "the perfect member matters most"
    assert "positive, the crowd is more accurate with it" in printed.out  # what the sign means
    assert (out / "reliability.png").stat().st_size > 1000 and (out / "cost_accuracy.png").stat().st_size > 1000
    assert "| e1 | 1.000 |" in printed.out
    assert "| e4 | - | 0 | 30 (HTTP 400: scripted failure 400) |" in printed.out
    assert "| always 'positive' (most frequent label) | 0.667 | 30 |" in printed.out
    again = main(["eval", "--votes", str(out / "annotations.jsonl"), "--out", str(tmp_path / "o2")])
    assert again == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["summary"] == summary["summary"]


def test_eval_with_an_embedded_gateway(upstream: Upstream, tmp_path: Path) -> None:
    """`--config` serves the gateway inside the eval command (tools/embedded.py), in this process."""
    upstream.script("x1", keywords={"good": "positive", "bad": "negative"})
    upstream.script("x2", keywords={"good": "positive", "bad": "negative"})
    members = [{"name": n, "base_url": upstream.base_url(n), "model": n} for n in ("x1", "x2")]
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(
        {"members": members, "ensembles": [{"name": "crowd", "members": ["x1", "x2"], "quorum": 2}]}))
    rows = [{"id": f"e{i}", "text": "good" if i % 2 else "bad", "label": "positive" if i % 2 else "negative"}
            for i in range(6)]
    (tmp_path / "data.csv").write_text("id,text,label\n" + "".join(f"{r['id']},{r['text']},{r['label']}\n"
                                                                  for r in rows))
    out = tmp_path / "out"
    assert main(["eval", "--dataset", str(tmp_path / "data.csv"), "--config", str(tmp_path / "gw.yaml"),
                 "--out", str(out), "--no-reaggregate"]) == 0
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert (summary["items"], summary["failed"], summary["accuracy"]) == (6, 0, 1.0)


def test_eval_where_every_item_failed_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data.jsonl").write_text('{"id": "a", "text": "x", "label": "p"}\n')
    assert main(["eval", "--dataset", str(tmp_path / "data.jsonl"), "--gateway", "http://127.0.0.1:9",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "crowd-gateway eval: no item was answered" in err and "Traceback" not in err
