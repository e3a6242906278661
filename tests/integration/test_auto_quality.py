"""`aggregator: auto` through the gateway: correlated workers by construction, gold through the feedback
route, a refit, then held-out items labelled with the official client."""

from __future__ import annotations

import random
from typing import Any

import httpx
from openai import OpenAI

from tests.harness import Upstream

N = 120
LABELS = ["positive", "negative"]


def crowd(seed: int = 3) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Gold labels and each member's answers: three copies of one weak worker (the same mistakes) and one
    strong independent worker."""
    rng = random.Random(seed)
    gold = {f"txt-{i:03d}": rng.choice(LABELS) for i in range(N)}
    flip = {"positive": "negative", "negative": "positive"}
    weak = {t: (g if rng.random() < 0.65 else flip[g]) for t, g in gold.items()}
    strong = {t: (g if rng.random() < 0.85 else flip[g]) for t, g in gold.items()}
    return gold, {"copy1": weak, "copy2": dict(weak), "copy3": dict(weak), "strong": strong}


def test_auto_matches_or_beats_the_best_member_on_held_out_items(upstream: Upstream, gateway_factory: Any) -> None:
    gold, answers = crowd()
    upstream.reset()
    for name, said in answers.items():
        upstream.script(name, keywords={f"{text} ": label for text, label in said.items()})
    config = {"refit": {"every_items": 10**6, "every_s": 3600, "min_items": 10, "min_gold_for_calibration": 20},
              "members": [{"name": n, "base_url": upstream.base_url(n), "model": n} for n in answers],
              "ensembles": [{"name": "crowd", "members": list(answers), "aggregator": "auto", "quorum": 1},
                            {"name": "vote", "members": list(answers), "aggregator": "majority", "quorum": 1}]}
    gw = gateway_factory(config)
    client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    items = sorted(gold)
    dev, test = items[:60], items[60:]

    def label(model: str, text: str) -> str:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"{text} "}],
                                           extra_body={"labels": LABELS, "item_id": text})
        return r.choices[0].message.content

    for text in dev:
        label("crowd", text)
        fb = httpx.post(f"{gw.v1}/annotations/feedback", json={"item_id": text, "label": gold[text], "source": "gold"})
        assert fb.status_code == 200
    assert httpx.post(f"{gw.v1}/annotations/refit", timeout=120).status_code == 200
    params = {p["aggregator"]: p for p in httpx.get(f"{gw.v1}/annotations/params").json()["data"]}
    assert params["auto"]["gold"] == len(dev) and set(params["auto"]["candidates"]) >= {"majority", "stacking", "prior"}

    crowd_right = sum(label("crowd", t) == gold[t] for t in test) / len(test)
    vote_right = sum(label("vote", t) == gold[t] for t in test) / len(test)
    members = {n: sum(said[t] == gold[t] for t in test) / len(test) for n, said in answers.items()}
    best = max(members.values())
    assert crowd_right >= best - 1e-9, (crowd_right, members, params["auto"]["chosen"])
    assert crowd_right > vote_right, "majority counts the three copies three times"
