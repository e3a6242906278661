"""Label quality in Prometheus, end to end: a gateway process labels items for the official client, gold labels
arrive through the feedback route (posted with the same client), and /metrics counts each member's and the crowd's
agreement with gold, the confidence it stated, votes agreeing with the crowd and review flags. The scraped series
then go through the recording rules of deploy/prometheus with promtool, so the rules read what the gateway exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Upstream
from tests.deploy.k8s_support import REPO, promtool

LABELS = ["positive", "negative"]
TRUTH = {f"txt-{i} ": LABELS[i % 2] for i in range(8)}
FLIP = {"positive": "negative", "negative": "positive"}
QUALITY = ("crowd_gateway_gold_answers", "crowd_gateway_gold_confidence", "crowd_gateway_gold_votes",
           "crowd_gateway_gold_vote_confidence", "crowd_gateway_votes", "crowd_gateway_reviews",
           "crowd_gateway_requests")


def script_upstream(upstream: Upstream) -> None:
    """m1 is always right (soft votes), m2 always says positive (right on half), m3 is wrong on the last two."""
    upstream.script("m1", keywords=TRUTH, logprobs="answer")
    upstream.script("m2", answer="positive")
    upstream.script("m3", keywords={t: (g if i < 6 else FLIP[g]) for i, (t, g) in enumerate(TRUTH.items())})


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {"members": [{"name": n, "base_url": upstream.base_url(n), "model": n} for n in ("m1", "m2", "m3")],
            "ensembles": [{"name": "crowd", "members": ["m1", "m2", "m3"], "aggregator": "majority",
                           "review": {"below": 0.9}}]}


def samples(gateway: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The quality counters (and answered requests) the gateway exports now, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(gateway.get("/metrics").text):
        if family.name in QUALITY:
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, key), v in found.items() if n == name and set(labels.items()) <= set(key))


def test_gold_checks_members_and_the_crowd_once(client: OpenAI, gateway: Any, tmp_path: Path) -> None:
    answers = {}
    for text in TRUTH:
        r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": text}],
                                           extra_body={"labels": LABELS, "item_id": text.strip()})
        answers[text] = r.model_extra["annotation"]
    gold = {"data": [{"item_id": t.strip(), "label": g, "source": "gold"} for t, g in TRUTH.items()]}
    posted = client.post("/annotations/feedback", body=gold, cast_to=object)
    assert [line["label"] for line in posted["data"]] == list(TRUTH.values())
    found = samples(gateway)

    assert total(found, "crowd_gateway_gold_votes_total", member="m1", outcome="right") == 8
    assert total(found, "crowd_gateway_gold_votes_total", member="m2", outcome="right") == 4
    assert total(found, "crowd_gateway_gold_votes_total", member="m3", outcome="wrong") == 2
    soft = [v["probs"][LABELS.index(v["label"])] for a in answers.values() for v in a["votes"] if v["member"] == "m1"]
    assert len(soft) == 8 and all(0.9 < p < 1 for p in soft)  # m1 states the probability of its label
    assert abs(total(found, "crowd_gateway_gold_vote_confidence_total", member="m1", bin="0.9") - sum(soft)) < 1e-5
    assert total(found, "crowd_gateway_gold_vote_confidence_total", member="m2", bin="0.9") == 8.0  # hard votes
    right = sum(a["label"] == TRUTH[t] for t, a in answers.items())
    assert right == 7 and total(found, "crowd_gateway_gold_answers_total", outcome="right") == right
    assert total(found, "crowd_gateway_gold_answers_total") == 8
    stated = total(found, "crowd_gateway_gold_confidence_total")
    assert abs(stated - sum(a["confidence"] for a in answers.values())) < 1e-5
    for member in ("m1", "m2", "m3"):
        agree = sum(v["label"] == a["label"] for a in answers.values() for v in a["votes"] if v["member"] == member)
        assert total(found, "crowd_gateway_votes_total", member=member, outcome="agree") == agree
        assert total(found, "crowd_gateway_votes_total", member=member, outcome="disagree") == 8 - agree
    flagged = sum(a["needs_review"] for a in answers.values())
    assert flagged == 5 and total(found, "crowd_gateway_reviews_total", ensemble="crowd") == flagged

    # The same gold again, and gold for an item nobody annotated: nothing is checked twice or without votes.
    client.post("/annotations/feedback", body=gold, cast_to=object)
    client.post("/annotations/feedback", cast_to=object,
                body={"item_id": "never-asked", "label": "positive", "source": "gold", "labels": LABELS})
    assert samples(gateway) == found

    recorded_series_pass_the_rules(found, answers, tmp_path)


def recorded_series_pass_the_rules(found: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                                   answers: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The scraped counters, as if scraped for an hour (0 for 30 minutes, then their value), through the recording
    rules: the rules' ratios equal what the answers say."""
    series = [{"series": "{}{{{}}}".format(name, ", ".join(f'{k}="{v}"' for k, v in
                                                         (("namespace", "crowd"), ("job", "crowd-gateway"), *key))),
               "values": f"0x30 {value}x30"} for (name, key), value in found.items()]

    def expect(record: str, values: dict[str, float]) -> dict[str, Any]:
        """The record's expected samples: one per member, or the ensemble's alone (key "")."""
        scope = 'namespace="crowd", job="crowd-gateway", ensemble="crowd"'
        members = {m: f', member="{m}"' if m else "" for m in values}
        return {"expr": record, "eval_time": "60m",
                "exp_samples": [{"labels": f"{record}{{{scope}{members[m]}}}", "value": v} for m, v in values.items()]}

    crowd_agreement = {m: sum(v["label"] == a["label"] for a in answers.values() for v in a["votes"]
                              if v["member"] == m) / 8 for m in ("m1", "m2", "m3")}
    tests = [expect("namespace_job_ensemble:crowd_gateway_gold_agreement:ratio1h", {"": 7 / 8}),
             expect("namespace_job_ensemble:crowd_gateway_review_ratio:rate1h", {"": 5 / 8}),
             expect("namespace_job_ensemble_member:crowd_gateway_gold_agreement:ratio1h",
                    {"m1": 1.0, "m2": 0.5, "m3": 0.75}),
             expect("namespace_job_ensemble_member:crowd_gateway_crowd_agreement:ratio1h", crowd_agreement)]
    shutil.copy(REPO / "deploy" / "prometheus" / "crowd-gateway-rules.yaml", tmp_path)
    (tmp_path / "scraped.test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["crowd-gateway-rules.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
    proc = subprocess.run([promtool(), "test", "rules", "scraped.test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
