"""`crowd-gateway annotate` as a user runs it: a real CLI process, a real gateway, scripted upstreams."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from tests.harness import BIN, Upstream, member
from tests.harness.inprocess import InProcessGateway

MEMBERS = ["q1", "q2", "q3"]
gateway_in_this_process = True  # served on 127.0.0.1 from this process: the CLI is what runs as a user runs it


def members(up: Upstream, names: list[str]) -> list[dict[str, Any]]:
    return [member(up, n, price=(1.0, 1.0)) for n in names]


def script_upstream(upstream: Upstream) -> None:
    for name in MEMBERS:
        upstream.script(name, keywords={"great": "positive", "awful": "negative", "zzz": "gibberish"})
    upstream.script("q3", keywords={"great": "positive", "awful": "positive", "zzz": "gibberish"})
    for name in ("s1", "s2"):
        upstream.script(name, answer="positive", latency_ms=100)


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {"members": members(upstream, MEMBERS + ["s1", "s2"]),
            "ensembles": [{"name": "crowd", "members": MEMBERS, "quorum": 2},
                          {"name": "slow", "members": ["s1", "s2"], "quorum": 2}]}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


INTERRUPTIBLE = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                                      "os.execv(sys.argv[1], sys.argv[1:])"]
"""Runs a command with SIGINT at its default, as from a terminal: a background job (CI runs the tests as one) inherits
SIGINT ignored, and Python then never turns it into KeyboardInterrupt."""


def annotate(*args: str, wait: bool = True, interruptible: bool = False) -> Any:
    cmd = [*(INTERRUPTIBLE if interruptible else []), str(BIN / "crowd-gateway"), "annotate", *args]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_csv_in_csv_out_with_votes_cost_and_progress(tmp_path: Path, gateway: InProcessGateway,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": f"r{i}", "text": "a great film" if i % 2 else "an awful film", "label": "positive"}
            for i in range(20)]
    write_csv(tmp_path / "in.csv", rows)
    code = main(["annotate", str(tmp_path / "in.csv"), "--labels", "positive,negative", "--ensemble", "crowd",
                 "--out", str(tmp_path / "out.csv"), "--gateway", gateway.url, "--concurrency", "4"])
    err = capsys.readouterr().err  # the CLI in this process; the killed run below is a real process
    assert code == 0, err
    assert "20/20" in err and "item/s" in err and "agree=" in err and "cost=$" in err
    out = read_csv(tmp_path / "out.csv")
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    row = next(r for r in out if r["id"] == "r1")
    assert row["crowd_label"] == "positive" and float(row["crowd_confidence"]) == pytest.approx(1.0)
    assert row["label"] == "positive" and row["text"] == "a great film"  # input columns pass through
    votes = json.loads(row["crowd_votes"])
    assert {v["member"]: v["label"] for v in votes} == {"q1": "positive", "q2": "positive", "q3": "positive"}
    awful = next(r for r in out if r["id"] == "r0")
    assert awful["crowd_label"] == "negative" and float(awful["crowd_confidence"]) == pytest.approx(2 / 3, abs=1e-4)
    assert awful["crowd_needs_review"] in ("true", "false") and float(awful["crowd_cost_usd"]) > 0


def test_killed_run_resumes_without_redoing_or_losing_rows(tmp_path: Path, gateway: InProcessGateway,
                                                           upstream: Upstream) -> None:
    rows = [{"id": f"k{i}", "text": f"sentence {i}"} for i in range(30)]
    write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.csv"
    args = (str(tmp_path / "in.csv"), "--labels", "positive,negative", "--ensemble", "slow", "--out", str(out),
            "--gateway", gateway.url, "--concurrency", "3")
    before = upstream.calls("s1")["calls"]
    proc = annotate(*args, wait=False)
    deadline = time.monotonic() + 30
    while (not out.exists() or out.read_text().count("\n") < 9) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(read_csv(out))
    assert 8 <= written < 30
    with out.open("a") as fh:
        fh.write("k999,half a row cut by the ki")  # as if the kill had landed mid-write
    done = annotate(*args)
    assert done.returncode == 0, done.stderr
    final = read_csv(out)
    assert sorted(r["id"] for r in final) == sorted(r["id"] for r in rows)  # each id once, the torn row gone
    calls = upstream.calls("s1")["calls"] - before
    assert 30 <= calls <= 30 + 3  # only the rows in flight at the kill were asked twice


def test_ctrl_c_says_how_to_resume(tmp_path: Path, gateway: InProcessGateway) -> None:
    """Issue 23: Ctrl-C on annotate exited silently."""
    rows = 300  # at most 10 per second: the run is far from done when the signal comes, however loaded the machine
    write_csv(tmp_path / "in.csv", [{"id": f"c{i}", "text": f"sentence {i}"} for i in range(rows)])
    out = tmp_path / "out.csv"
    proc = annotate(str(tmp_path / "in.csv"), "--labels", "positive,negative", "--ensemble", "slow", "--out", str(out),
                    "--gateway", gateway.url, "--concurrency", "1", wait=False, interruptible=True)
    deadline = time.monotonic() + 30
    while (not out.exists() or out.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err
    written = len(read_csv(out))
    assert written < rows and f"interrupted: {written}/{rows} rows are in {out}; run the same command to resume" in err


def test_jsonl_with_task_and_embedded_gateway_and_failed_rows(tmp_path: Path, upstream: Upstream,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = {"members": members(upstream, MEMBERS),
              "ensembles": [{"name": "crowd", "members": MEMBERS, "quorum": 3}],
              "tasks": [{"name": "sentiment", "labels": ["positive", "negative"], "instructions": "Sentiment?"}]}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
    rows = [{"doc": f"d{i}", "body": "great" if i != 3 else "zzz"} for i in range(6)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["annotate", str(tmp_path / "in.jsonl"), "--task", "sentiment", "--text-column", "body", "--id-column",
            "doc", "--out", str(tmp_path / "out.jsonl"), "--config", str(tmp_path / "gw.yaml"), "--retries", "0"]
    assert main(args) == 1  # in this process, as the embedded gateway is
    err = capsys.readouterr().err
    assert "failed d3" in err and "quorum" in err
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["doc"] for r in out) == ["d0", "d1", "d2", "d4", "d5"]
    assert all(r["crowd_label"] == "positive" and len(r["crowd_votes"]) == 3 for r in out)
    before = upstream.calls("q1")["calls"]
    assert main(args) == 1 and upstream.calls("q1")["calls"] == before + 1  # only the failed row is asked again


@pytest.mark.parametrize("args, needle", [
    (["--labels", "a,b"], "duplicate ids"),
    ([], "exactly one of --labels"),
    (["--labels", "a,b", "--task", "t"], "exactly one of --labels"),
    (["--labels", "a,b", "--config", "x.yaml"], "exactly one of --gateway"),
])
def test_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                   needle: str) -> None:
    (tmp_path / "in.csv").write_text("id,text\n1,a\n1,b\n")
    assert main(["annotate", str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.csv"),
                 "--gateway", "http://127.0.0.1:9", *args]) == 2
    assert needle in capsys.readouterr().err


def test_missing_text_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.csv").write_text("id,text\n1,a\n")
    assert main(["annotate", str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.csv"), "--labels", "a,b",
                 "--text-column", "body", "--gateway", "http://127.0.0.1:9"]) == 2
    assert "no column 'body'" in capsys.readouterr().err
