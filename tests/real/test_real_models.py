"""The real-model tier: the gateway in front of REAL small models on CPU (vLLM's CPU build serving
SmolLM2 and Gemma 3), driven with the official openai client. Slow (the pool starts in about a minute):
marker `real`, run by .ci/run after the fast tests via `make test`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.tools.pool import running_pool
from gateway.tools.pool_status import pool_status
from gateway.upstream.queue_depth import parse_queue_depth
from tests.harness import ROOT, Gateway

pytestmark = pytest.mark.real
POOL = ROOT / "deploy" / "local-pool.yaml"
HELDOUT = ROOT / "gateway" / "data" / "sentiment_heldout.jsonl"
LABELS = ["positive", "negative"]
"""The `sentiment` task's label set, in its order (soft votes are in label-set order)."""
INTENTS = ROOT / "tests" / "real" / "data" / "intents_sample.jsonl"
"""30 requests of the seven intents, bundled (tests/real/data/ATTRIBUTION.md)."""


@pytest.fixture(scope="module")
def pool() -> Iterator[None]:
    with running_pool(load_config(POOL)):
        yield


@pytest.fixture(scope="module")
def gateway(pool: None, gateway_factory: Any) -> Gateway:
    return gateway_factory(yaml.safe_load(POOL.read_text()))


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def heldout(client: OpenAI) -> list[tuple[dict[str, Any], Any]]:
    """The 40 held-out sentences, each labelled once by the crowd (shared by the tests below)."""
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    assert len(rows) == 40
    return [(row, client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": row["text"]}],
                                                 extra_body={"task": "sentiment", "item_id": row["id"]}))
            for row in rows]


def test_every_label_is_in_the_label_set(heldout: list) -> None:
    for _, r in heldout:
        ann = r.model_extra["annotation"]
        assert r.choices[0].message.content in LABELS and ann["label"] in LABELS
        for vote in ann["votes"]:
            assert vote["label"] in LABELS or (vote["label"] is None and vote["error"]), vote
        valid = [v for v in ann["votes"] if v["label"] is not None]
        assert len(valid) >= 3  # quorum of the local crowd


OBVIOUS = [("Great film!", "positive"), ("I loved every minute of it.", "positive"),
           ("Absolutely wonderful service, thank you!", "positive"),
           ("This is the best purchase I have made all year.", "positive"),
           ("The food was delicious and the staff were friendly.", "positive"),
           ("Terrible service, never again.", "negative"), ("The worst movie I have ever seen.", "negative"),
           ("It broke after one day. Total waste of money.", "negative"),
           ("The room was dirty and the staff were rude.", "negative"), ("I hated it.", "negative")]
"""Ten sentences nobody would label otherwise (issue 23: "Great film!" came back negative 0.891)."""


def test_the_readmes_first_example_without_task_is_right_on_every_member(client: OpenAI, gateway: Gateway) -> None:
    """The README's first call as written (`labels` only, no `task`): every worker of the shipped pool votes (Gemma 3
    270M has no chat template: its members' completion template serves the request), the crowd is right, and no
    member is unhealthy for refusing calls."""
    for text, gold in OBVIOUS:
        r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": text}],
                                           extra_body={"labels": ["positive", "negative"]})
        votes = r.model_extra["annotation"]["votes"]
        assert len(votes) == crowd_size() and [v for v in votes if v["error"]] == [], votes
        assert r.choices[0].message.content == gold, (text, r.model_extra["annotation"])
    ready = gateway.get("/readyz").json()
    assert ready["problems"] == {} and all(ready["members"].values()), ready


def test_vllm_honours_structured_outputs_choice(client: OpenAI) -> None:
    """Passthrough to the vLLM member: free text would be long; the choice constraint forces one option."""
    choices = ["alpha", "beta", "gamma"]
    for prompt in ("Write a long poem about the sea.", "What is the capital of France?"):
        r = client.completions.create(model="smol-a", prompt=prompt, max_tokens=20,
                                      extra_body={"structured_outputs": {"choice": choices}})
        assert r.choices[0].text in choices


def crowd_size() -> int:
    """Workers in the pool's `crowd` ensemble: each is asked once per item."""
    return len(next(e for e in load_config(POOL).ensembles if e.name == "crowd").members)


def test_each_vote_is_one_forward_pass_with_a_soft_vote(heldout: list) -> None:
    votes = [v for _, r in heldout for v in r.model_extra["annotation"]["votes"] if v["label"] is not None]
    assert len(votes) >= 0.9 * crowd_size() * len(heldout)
    one_token = [v for v in votes if v["completion_tokens"] == 1]
    assert len(one_token) >= 0.9 * len(votes), "the first token decided (no second, constrained call)"
    for v in one_token:
        assert v["probs"] is not None and sum(v["probs"]) == pytest.approx(1.0, abs=1e-4)
        assert v["probs"][LABELS.index(v["label"])] == max(v["probs"])  # the label is the likeliest first token


def test_cost_is_accounted(heldout: list) -> None:
    prices = {m["name"]: m["price"] for m in yaml.safe_load(POOL.read_text())["members"]}
    for _, r in heldout:
        votes = r.model_extra["annotation"]["votes"]
        expected = sum((v["prompt_tokens"] * prices[v["member"]]["input_usd_per_mtok"]
                        + v["completion_tokens"] * prices[v["member"]]["output_usd_per_mtok"]) / 1e6 for v in votes)
        assert r.usage.model_extra["cost_usd"] == pytest.approx(expected, rel=1e-6) and expected > 0
        assert r.usage.prompt_tokens == sum(v["prompt_tokens"] for v in votes) > 0


def test_crowd_against_best_member(heldout: list) -> None:
    n = len(heldout)
    crowd = sum(r.model_extra["annotation"]["label"] == row["label"] for row, r in heldout) / n
    members: dict[str, int] = {}
    for row, r in heldout:
        for v in r.model_extra["annotation"]["votes"]:
            members[v["member"]] = members.get(v["member"], 0) + (v["label"] == row["label"])
    accuracy = {m: c / n for m, c in members.items()}
    best = max(accuracy.values())
    print("\nreal-model tier, 40 held-out sentences: " + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items())
          + f"; crowd {crowd:.3f} (best member {best:.3f})")
    assert crowd >= best - 0.05


def test_adaptive_cascade_asks_fewer_members_and_stops_for_its_reason(client: OpenAI, heldout: list) -> None:
    rows = [row for row, _ in heldout]
    workers = len(next(e for e in load_config(POOL).ensembles if e.name == "cascade").members)
    answers = [client.chat.completions.create(model="cascade", messages=[{"role": "user", "content": row["text"]}],
                                              extra_body={"task": "sentiment"}).model_extra["annotation"]
               for row in rows]
    for ann in answers:
        assert ann["stop_reason"] in ("confident", "exhausted"), ann
        if ann["stop_reason"] == "confident":
            assert ann["confidence"] >= 0.9 and ann["calls"] >= 2
        else:
            assert ann["calls"] == workers, "exhausted means every worker was asked"
    calls = sum(a["calls"] for a in answers) / len(answers)
    accuracy = sum(a["label"] == row["label"] for a, row in zip(answers, rows)) / len(rows)
    crowd = sum(r.model_extra["annotation"]["label"] == row["label"] for row, r in heldout) / len(rows)
    print(f"\nadaptive cascade, 40 held-out sentences: accuracy {accuracy:.3f} with {calls:.2f} calls per item; "
          f"fan-out crowd {crowd:.3f} with {workers} calls")
    assert calls < workers
    assert accuracy >= 0.75, "well above chance on easy sentiment"


def test_least_loaded_reads_the_real_vllm_queue_gauges(pool: None) -> None:
    """vLLM's /metrics exports the two gauges least_loaded reads (waiting + running requests)."""
    text = httpx.get("http://127.0.0.1:8101/metrics", timeout=10).text
    depth = parse_queue_depth(text)
    assert depth is not None and depth >= 0


def test_the_same_pool_labels_intents_through_the_task_prompt(client: OpenAI) -> None:
    """Seven intents, no per-task member list: the task names the prompt (and its variants) the workers use. The
    first token's top-20 log-probabilities often miss intents: no soft vote gives one of them a 0.0 (those worth
    it are scored with vLLM's prompt log-probabilities, the others given the truncation bound)."""
    rows = [json.loads(line) for line in INTENTS.read_text().splitlines() if line.strip()]
    assert len(rows) == 30 and len({row["label"] for row in rows}) == 7
    right, soft = 0, 0
    for row in rows:
        r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": row["text"]}],
                                           extra_body={"task": "intents", "item_id": row["id"]})
        ann = r.model_extra["annotation"]
        assert ann["label"] in json.loads(json.dumps(ann["distribution"])) and len(ann["distribution"]) == 7
        for vote in ann["votes"]:
            if vote["probs"] is not None:
                soft += 1
                assert min(vote["probs"]) > 0.0, (vote["member"], vote["probs"])
        right += ann["label"] == row["label"]
    assert soft >= len(rows) * 3, "most votes are soft"
    print(f"\nintents, 30 items: crowd accuracy {right / len(rows):.3f} (chance 0.143)")
    assert right / len(rows) >= 0.35, "well above chance on seven intents (measured 0.50 on this sample)"


def test_grouped_calls_to_vllm_give_the_votes_of_single_calls(client: OpenAI, gateway: Gateway,
                                                              heldout: list) -> None:
    """Job traffic on the real engines: 16 held-out sentences sent at once with `service_tier: "flex"`, so their
    prompts share `/v1/completions` calls with a list of prompts; vLLM answers each by its index, and every vote
    is the one the single calls of `heldout` gave."""
    pairs = heldout[:16]

    def flex(row: dict[str, Any]) -> Any:
        return client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": row["text"]}],
                                              extra_body={"task": "sentiment", "item_id": row["id"]},
                                              service_tier="flex")

    with ThreadPoolExecutor(len(pairs)) as pool:
        grouped = list(pool.map(flex, [row for row, _ in pairs]))
    single = [{v["member"]: v["label"] for v in r.model_extra["annotation"]["votes"]} for _, r in pairs]
    again = [{v["member"]: v["label"] for v in r.model_extra["annotation"]["votes"]} for r in grouped]
    same = sum(a[m] == b.get(m) for a, b in zip(single, again) for m in a)
    assert same >= 0.9 * sum(len(a) for a in single), (single, again)
    families = {f.name: f for f in text_string_to_metric_families(gateway.get("/metrics").text)}
    samples = {(s.name, s.labels.get("member")): s.value for s in families["crowd_gateway_grouped_prompts"].samples}
    calls = sum(v for (name, _), v in samples.items() if name.endswith("_count"))
    prompts = sum(v for (name, _), v in samples.items() if name.endswith("_sum"))
    assert prompts == crowd_size() * len(pairs) and calls < prompts, "prompts shared calls"


def test_the_pool_reports_the_prefix_cache_hit_rate_of_its_engines(heldout: list) -> None:
    """After the held-out sentences, most prompt tokens of each engine came from its prefix cache (the few-shot
    prefix of each worker's prompt), and `pool status` says so."""
    caches = {s.name: s.prefix_cache for s in pool_status(load_config(POOL))}
    print("\nvLLM prefix cache: " + ", ".join(f"{n} {c.describe() if c else '-'}" for n, c in caches.items()))
    assert caches and all(c is not None and c.hit_rate is not None and c.hit_rate > 0.5 for c in caches.values()), \
        caches
