"""How many times one ensemble answer crosses between the project's packages (prints figures; not a test).

Why: a change to how one worker is asked or how an answer is built should touch one package, and the number of
calls that go from one package into another on the way is what makes it touch more. One chat completion to a
five-member ensemble (one wave: the members agree) runs through the gateway app in this process against the fake
upstream; every Python call from a function of one project package into a function of another is counted (a
package is the folder of the module: `gateway`, `gateway.upstream`, `ensembles.aggregators`, ...; a coroutine
resumed by the event loop is not a new call, nor is one started as a task). The warm-up answers first, so one-time imports and caches are not
counted; the response cache is off so the members are asked.

Run: .venv/bin/python bench/hops.py [--members 5] [--top 15]
"""

from __future__ import annotations

import argparse
import asyncio
import dis
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.harness import Upstream, start_upstream  # noqa: E402

PROJECT = ("gateway", "ensembles", "routers")
RESUME = dis.opmap["RESUME"]


def package(frame: FrameType) -> str | None:
    """The project package a frame's function belongs to (None outside the project)."""
    module = frame.f_globals.get("__name__", "")
    if not module.startswith(PROJECT):
        return None
    return module if frame.f_code.co_filename.endswith("__init__.py") else module.rpartition(".")[0]


def first_entry(frame: FrameType) -> bool:
    """A call that starts the function (RESUME 0), not a coroutine or generator resumed after an await/yield."""
    code, at = frame.f_code.co_code, frame.f_lasti
    return at >= 0 and code[at] == RESUME and code[at + 1] == 0


class Crossings:
    def __init__(self) -> None:
        self.pairs: Counter[tuple[str, str]] = Counter()
        self.calls: Counter[str] = Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or frame.f_back is None or not first_entry(frame):
            return
        callee, caller = package(frame), package(frame.f_back)
        if callee is None or caller is None or callee == caller:
            return
        self.pairs[(caller, callee)] += 1
        self.calls[f"{frame.f_back.f_globals['__name__']}.{frame.f_back.f_code.co_name} -> "
                   f"{frame.f_globals['__name__']}.{frame.f_code.co_name}"] += 1


async def one_answer(members: int, upstream: Upstream) -> tuple[Crossings, dict[str, Any]]:
    from gateway.app import create_app
    from gateway.config import parse_config

    names = [f"m{i}" for i in range(members)]
    config = {"cache": {"enabled": False},
              "members": [{"name": n, "base_url": upstream.base_url(n), "model": f"{n}-model",
                           "dialect": "vllm", "timeout_s": 5, "retries": 0} for n in names],
              "ensembles": [{"name": "crowd", "members": names}]}
    for name in names:
        upstream.script(name, keywords={"film": "positive"}, logprobs="answer")
    app = create_app(parse_config(config))
    counted = Crossings()
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            def ask(text: str) -> Any:
                return client.post("/v1/chat/completions", json={
                    "model": "crowd", "labels": ["positive", "negative"],
                    "messages": [{"role": "user", "content": text}]})

            for i in range(3):
                (await ask(f"warm-up film {i}")).raise_for_status()
            sys.setprofile(counted)
            try:
                answer = await ask("a fine film")
            finally:
                sys.setprofile(None)
    answer.raise_for_status()
    return counted, answer.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="how many of the most frequent crossings to list")
    args = parser.parse_args()
    with start_upstream() as upstream:
        counted, answer = asyncio.run(one_answer(args.members, upstream))
    annotation = answer["annotation"]
    print(f"one answer of a {args.members}-member ensemble: label {annotation['label']!r}, "
          f"stop reason {annotation.get('stop_reason')!r}, {len(annotation['votes'])} votes")
    print(f"package crossings: {sum(counted.pairs.values())} "
          f"({sum(counted.pairs.values()) / args.members:.1f} per member call), at {len(counted.calls)} distinct call sites "
          f"(function -> function)")
    for (caller, callee), n in counted.pairs.most_common():
        print(f"  {n:4d}  {caller} -> {callee}")
    print(f"most frequent crossing calls (top {args.top}):")
    for call, n in counted.calls.most_common(args.top):
        print(f"  {n:4d}  {call}")


if __name__ == "__main__":
    main()
