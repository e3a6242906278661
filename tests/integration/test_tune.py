"""`crowd-gateway tune` end to end: members over real HTTP record their votes, the gateway's own path is
replayed per setting, the frontier is printed, the choice is written into a commented config, and a
real gateway serving that config labels the dev items as tune said it would."""

from __future__ import annotations

import contextlib
import difflib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway import cli
from gateway.config import load_config
from tests.harness import Upstream
from tests.harness.inprocess import InProcessGateway

LABELS = ["negative", "positive"]
N_ITEMS = 30
PRICES = {"tune-a": 1.0, "tune-b": 2.0, "tune-c": 3.0, "tune-big": 50.0}
"""USD per million input tokens; every call is 10 prompt tokens, so 1e-5 USD per call per dollar here."""


def truth(i: int) -> str:
    return LABELS[i % 2]


def wrong(name: str, i: int) -> bool:
    """Three cheap workers of different skill whose errors overlap only on a few items (5 is wrong for all)."""
    return {"tune-a": i % 5 == 0, "tune-b": i % 4 == 1, "tune-c": i % 3 == 2, "tune-big": i == 5}[name]


def text(i: int) -> str:
    return f"Review TUNE{i:03d}X of the film"


def item_id(i: int) -> str:
    return f"tune-{i:03d}"


CONFIG = """\
# A tune test config: every comment here must survive `crowd-gateway tune`.
refit: {{every_items: 100000, every_s: 3600, min_items: 5, min_gold_for_calibration: 10, poll_s: 0.2}}

members:
{members}
ensembles:
  # the cascade tune searches: start, target, and when to escalate
  - name: crowd
    members: [tune-a, tune-b, tune-c]
    aggregator: dawid_skene
    router: adaptive   # cheapest reliable workers first
    routing:
      start: 3         # tuned
      target: 0.99     # tuned
      price_weight: 1  # tuned
    escalation: {{below: 0.95, to: tune-big}}
  # everyone, so a gateway stores every vote for its refit (a flow mapping wrapped over lines, kept as it is)
  - {{name: all, members: [tune-a, tune-b, tune-c, tune-big],
     aggregator: dawid_skene}}
"""


def member_yaml(upstream: Upstream, name: str) -> str:
    return (f"  # {name}: ${PRICES[name]:g} per million prompt tokens\n"
            f"  - name: {name}\n    base_url: {upstream.base_url(name)}\n    model: {name}\n    retries: 0\n"
            f"    price: {{input_usd_per_mtok: {PRICES[name]}, output_usd_per_mtok: 0.0}}\n")


@dataclass
class Run:
    code: int
    out: str
    err: str


def tune(*argv: str) -> Run:
    """The CLI in this process (a traceback would fail the test); stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["tune", *argv])
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def dev(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A commented config, a dev set, and members scripted to answer each item deterministically."""
    for name in PRICES:
        upstream.script(name, usage=[10, 1], keywords={
            f"TUNE{i:03d}X": LABELS[1 - LABELS.index(truth(i))] if wrong(name, i) else truth(i)
            for i in range(N_ITEMS)})
    root = tmp_path_factory.mktemp("tune")
    (root / "config.yaml").write_text(CONFIG.format(members="".join(member_yaml(upstream, n) for n in PRICES)))
    (root / "dev.jsonl").write_text("".join(
        f'{{"id": "{item_id(i)}", "text": "{text(i)}", "label": "{truth(i)}"}}\n' for i in range(N_ITEMS)))
    return root


def base_args(dev: Path, output: str) -> list[str]:
    return ["--config", str(dev / "config.yaml"), "--dataset", str(dev / "dev.jsonl"), "--ensemble", "crowd",
            "--output", str(dev / output)]


def frontier(out: str) -> list[dict[str, str]]:
    """The printed frontier table as rows keyed by column."""
    lines = out.split("Cost-accuracy frontier", 1)[1].splitlines()[1:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [line for line in lines[2:] if line.startswith("|")]
    return [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in rows]


def chosen(out: str) -> dict[str, float]:
    line = next(line for line in out.splitlines() if line.startswith("chosen on"))
    found = re.search(r"accuracy ([\d.]+), \$([\d.]+) per 1,000", line)
    assert found, line
    return {"accuracy": float(found[1]), "cost": float(found[2])}


def assert_as_printed(run: Run, accuracy: float, cost: float) -> None:
    """The gateway's figures are the ones tune printed (to the printed precision)."""
    assert accuracy == pytest.approx(chosen(run.out)["accuracy"], abs=5e-4)
    assert cost == pytest.approx(chosen(run.out)["cost"], abs=5e-7)


@pytest.fixture(scope="module")
def by_accuracy(dev: Path) -> Run:
    return tune(*base_args(dev, "by-accuracy.yaml"), "--target-accuracy", "0.9")


@pytest.fixture(scope="module")
def by_budget(dev: Path) -> Run:
    return tune(*base_args(dev, "by-budget.yaml"), "--budget-usd-per-1k", "0.04")


def test_frontier_is_printed_and_monotone(by_accuracy: Run) -> None:
    assert by_accuracy.code == 0, by_accuracy.err
    rows = frontier(by_accuracy.out)
    assert len(rows) >= 3
    assert list(rows[0])[:4] == ["routing.start", "routing.target", "routing.price_weight", "escalation.below"]
    costs = [float(r["USD per 1,000 labels"]) for r in rows]
    accuracies = [float(r["accuracy"]) for r in rows]
    assert costs == sorted(costs) and accuracies == sorted(accuracies) and len(set(accuracies)) == len(rows)
    assert "| tune-a | 0.800 |" in by_accuracy.out  # each worker alone is reported next to the crowd
    majority = max(LABELS, key=lambda label: sum(truth(i) == label for i in range(N_ITEMS)))
    share = sum(truth(i) == majority for i in range(N_ITEMS)) / N_ITEMS
    assert f"| always {majority!r} (most frequent label) | {share:.3f} |" in by_accuracy.out  # the trivial answer


def test_config_holds_the_choice_keeps_comments_and_validates(dev: Path, by_accuracy: Run) -> None:
    written = (dev / "by-accuracy.yaml").read_text()
    original = (dev / "config.yaml").read_text()
    changed = [line for line in difflib.ndiff(original.splitlines(), written.splitlines())
               if line.startswith(("- ", "+ "))]
    assert changed and all(re.search(r"\b(start|target|price_weight|below):", line) for line in changed), changed
    assert len(changed) <= 2 * 4, "one changed line per tuned knob (issue 23: a wrapped flow mapping was joined)"
    assert "# tuned" in written and "# cheapest reliable workers first" in written
    crowd = next(e for e in load_config(dev / "by-accuracy.yaml").ensembles if e.name == "crowd")
    line = next(line for line in by_accuracy.out.splitlines() if line.startswith("chosen on"))
    assert f"routing.start {crowd.routing.start}," in line
    assert f"routing.target {crowd.routing.target:g}," in line
    assert f"routing.price_weight {crowd.routing.price_weight:g}," in line
    below = "off" if crowd.escalation.below == 0 else f"{crowd.escalation.below:g}"
    assert f"escalation.below {below}:" in line
    assert (dev / "config.yaml").read_text() == original  # --output leaves the source alone


def test_choices_hold_on_a_real_gateway(dev: Path, by_accuracy: Run, by_budget: Run,
                                       request: pytest.FixtureRequest) -> None:
    """A gateway (the app in this process, its members over HTTP) serving the tuned configs, once it has learned reliability from the same votes and gold,
    reaches the target accuracy and stays within the budget, with the figures tune printed."""
    assert by_budget.code == 0, by_budget.err
    assert chosen(by_accuracy.out)["accuracy"] >= 0.9
    assert chosen(by_budget.out)["cost"] <= 0.04
    within = [r for r in frontier(by_budget.out) if float(r["USD per 1,000 labels"]) <= 0.04]
    assert chosen(by_budget.out)["accuracy"] == max(float(r["accuracy"]) for r in within)
    config = yaml.safe_load((dev / "by-accuracy.yaml").read_text())
    budget = next(e for e in yaml.safe_load((dev / "by-budget.yaml").read_text())["ensembles"] if e["name"] == "crowd")
    config["ensembles"].append({**budget, "name": "crowd-budget"})
    config["cache"] = {"enabled": False}  # `all` asks the same prompts first: the members must answer, at their price
    gateway = InProcessGateway(config)
    request.addfinalizer(gateway.close)
    client = gateway.openai()

    def label(model: str) -> tuple[float, float]:
        replies = [client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text(i)}],
            extra_body={"labels": LABELS, "item_id": item_id(i)}) for i in range(N_ITEMS)]
        right = sum(r.choices[0].message.content == truth(i) for i, r in enumerate(replies))
        return right / N_ITEMS, 1000 * sum(r.usage.model_extra["cost_usd"] for r in replies) / N_ITEMS

    label("all")
    for i in range(N_ITEMS):
        gateway.post("/v1/annotations/feedback",
                     json={"item_id": item_id(i), "label": truth(i), "source": "gold"}).raise_for_status()
    assert gateway.post("/v1/annotations/refit", timeout=120).json()["refitted"]
    accuracy, cost = label("crowd")
    assert accuracy >= 0.9
    assert_as_printed(by_accuracy, accuracy, cost)
    accuracy, cost = label("crowd-budget")
    assert cost <= 0.04 + 1e-12
    assert_as_printed(by_budget, accuracy, cost)


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot read"),
    ("malformed", "not valid JSONL"),
    ("ensemble", "no ensemble 'nope'"),
    ("labels", "labels ['neutral'] are not in the label set ['negative', 'positive']"),
    ("unreachable", "no setting reaches accuracy 0.99 on the dev items; the best achievable is 0.967"),
    ("budget", "no setting costs at most $0.001 per 1,000 labels; the cheapest costs $0.010000"),
])
def test_bad_input_is_one_line_and_exit_2(dev: Path, case: str, message: str) -> None:
    args = base_args(dev, f"{case}.yaml")
    goal = ["--target-accuracy", "0.9"]
    if case == "missing":
        args[3] = str(dev / "absent.jsonl")
    elif case == "malformed":
        (dev / "malformed.jsonl").write_text((dev / "dev.jsonl").read_text() + '{"id": "x", "text": \n')
        args[3] = str(dev / "malformed.jsonl")
    elif case == "ensemble":
        args[5] = "nope"
    elif case == "labels":
        (dev / "neutral.jsonl").write_text((dev / "dev.jsonl").read_text()
                                           + '{"id": "n1", "text": "meh", "label": "neutral"}\n')
        args[3] = str(dev / "neutral.jsonl")
        goal += ["--labels", ",".join(LABELS)]
    elif case == "unreachable":
        goal = ["--target-accuracy", "0.99"]
    elif case == "budget":
        goal = ["--budget-usd-per-1k", "0.001"]
    run = tune(*args, *goal)
    assert run.code == 2
    assert run.err.startswith("crowd-gateway tune: ") and message in run.err, run.err
    assert run.err.count("\n") == 1 and "Traceback" not in run.err + run.out
    assert not (dev / f"{case}.yaml").exists()


def test_holdout_reports_the_choice_on_items_kept_out(dev: Path) -> None:
    run = tune(*base_args(dev, "holdout.yaml"), "--budget-usd-per-1k", "0.04", "--holdout-fraction", "0.3")
    assert run.code == 0, run.err
    tuned = int(re.search(r"chosen on (\d+) dev items", run.out)[1])
    held = int(re.search(r"held out \((\d+) items\): accuracy [\d.]+", run.out)[1])
    assert tuned + held == N_ITEMS and 0 < held < N_ITEMS
