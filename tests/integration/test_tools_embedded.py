"""The tools' embedded gateway and labelling client, against the scripted upstream."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.tools import UsageError
from gateway.tools.embedded import embedded_gateway
from gateway.tools.labelling import Answer, label_items
from tests.harness import Upstream


@pytest.fixture
def config_file(upstream: Upstream, tmp_path: Path) -> Path:
    for name in ("t1", "t2"):
        upstream.script(name, keywords={"great": "positive", "awful": "negative", "zzz": "gibberish"})
    members = [{"name": n, "base_url": upstream.base_url(n), "model": n, "retries": 0, "timeout_s": 5}
               for n in ("t1", "t2")]
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"members": members,
                                    "ensembles": [{"name": "crowd", "members": ["t1", "t2"], "quorum": 2}]}))
    return path


def label(v1: str, model: str, texts: list[str]) -> list[Answer]:
    answers: list[Answer] = []
    asyncio.run(label_items(v1, "unused", model, [(f"i{n}", t) for n, t in enumerate(texts)],
                            {"labels": ["positive", "negative"]}, answers.append, concurrency=2, retries=0))
    return sorted(answers, key=lambda a: a.index)


def test_embedded_gateway_serves_logs_and_stops(config_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    with embedded_gateway(config_file, log=log) as v1:
        assert v1.startswith("http://127.0.0.1:") and v1.endswith("/v1")
        assert [m["id"] for m in httpx.get(f"{v1}/models").json()["data"]][:1] == ["crowd"]
        port = int(v1.split(":")[2].split("/")[0])
    assert "Application startup complete" in log.read_text()
    assert not any(t.name == "embedded-gateway" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_labelling_client_keeps_answers_and_failures_in_order(config_file: Path) -> None:
    with embedded_gateway(config_file) as v1:
        answers = label(v1, "crowd", ["a great film", "an awful film", "zzz"])
    assert [a.index for a in answers] == [0, 1, 2]
    assert [a.annotation["label"] if a.annotation else None for a in answers] == ["positive", "negative", None]
    assert answers[2].error and "quorum" in answers[2].error and answers[2].cost_usd == 0.0


def test_a_member_instead_of_an_ensemble_is_a_usage_error(config_file: Path) -> None:
    with embedded_gateway(config_file) as v1, pytest.raises(UsageError, match="name an ensemble"):
        label(v1, "t1", ["a great film"])


def test_a_gateway_that_cannot_start_is_a_usage_error(tmp_path: Path, upstream: Upstream,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROWD_TEST_CLOSED_REDIS", "redis://127.0.0.1:9/0")  # nothing listens on port 9
    config: dict[str, Any] = {"members": [{"name": "x", "base_url": upstream.base_url("x"), "model": "x"}],
                              "store": {"backend": "redis", "redis_url_env": "CROWD_TEST_CLOSED_REDIS"}}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match="embedded gateway did not start"), embedded_gateway(tmp_path / "gw.yaml"):
        pass
