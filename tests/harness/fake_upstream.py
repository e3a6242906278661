"""A scriptable OpenAI-compatible test server: the test double of a pool of model servers.

One process serves many members under `/m/{name}/v1/...`. Each member's behaviour is set with
`POST /_script/{name}` (JSON): `answer` (fixed content), `keywords` ({substring: answer}, matched
against the request's text), `latency_ms`, `fail` (list of statuses returned by the next calls,
in order), `retry_after` (header sent with failures), `drop` (close the connection without an
answer), `down` (health and /v1/models fail), `logprobs` ({token: logprob} for the first answer token;
"answer": the answer itself at logprob -0.01, so each prompt's one-pass vote follows its keywords),
`usage` ([prompt, completion] tokens), `label_logprobs` ({label: logprob}: a completion call with
`prompt_logprobs` is answered as vLLM does, one `prompt_logprobs` list per prompt, one entry per whitespace-led
token; the tokens of a prompt ending in " <label>" carry that label's logprob, every other token -0.5), `cut_stream` (stream a few chunks then drop), `stream_gap_ms` (pause
before each streamed chunk after the first; a client that leaves meanwhile counts as `cancelled`), `jitter_ms`
(mean of an exponential delay added to `latency_ms`, seeded per member), `queue` ([waiting,
running], served as vLLM's gauges on `GET /m/{name}/metrics`), `raw` (any JSON value, sent verbatim
with status 200 as the completion body: the odd replies a fault test needs). `GET /_calls/{name}` returns
how many calls arrived, how many prompts they carried (a completion's `prompt` may be a list, answered as
vLLM does: one choice per prompt, `index` its position), how many the client abandoned while they waited
(`cancelled`), and the last completion call's body and headers (`last`, `headers`: a `traceparent` among them). Used by the integration tests and by bench/ as the fast upstream.

Served two ways, one logic: as a process on 127.0.0.1 (integration tests, bench/: tests/harness/upstream.py starts
it) and inside the test's own process over an in-memory connection (the unit tier: tests/harness/memory.py).

Run: python tests/harness/fake_upstream.py --port 8199
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from typing import Any

import orjson
from aiohttp import web

DEFAULT = {"answer": None, "keywords": {}, "latency_ms": 0, "fail": [], "retry_after": None, "drop": False,
           "down": False, "logprobs": None, "usage": [10, 1], "cut_stream": False, "jitter_ms": 0, "queue": None,
           "raw": None, "label_logprobs": {}, "stream_gap_ms": 0}
POLL_S = 0.005


class Members:
    def __init__(self) -> None:
        self.scripts: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, int] = {}
        self.prompts: dict[str, int] = {}
        self.cancelled: dict[str, int] = {}
        self.last: dict[str, Any] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.rngs: dict[str, random.Random] = {}

    def script(self, name: str) -> dict[str, Any]:
        return self.scripts.setdefault(name, {**DEFAULT, "fail": []})

    def set_script(self, name: str, behaviour: dict[str, Any]) -> None:
        self.scripts[name] = {**DEFAULT, "fail": [], **behaviour}

    def report(self, name: str) -> dict[str, Any]:
        """What `GET /_calls/{name}` answers."""
        return {"calls": self.calls.get(name, 0), "prompts": self.prompts.get(name, 0),
                "cancelled": self.cancelled.get(name, 0), "last": self.last.get(name), "headers": self.headers.get(name)}


def _answer(script: dict[str, Any], body: dict[str, Any], prompt: Any = None) -> str:
    text = orjson.dumps(prompt if prompt is not None else body.get("messages") or body.get("prompt") or "").decode()
    for keyword, answer in script["keywords"].items():
        if keyword in text:
            return answer
    if script["answer"] is not None:
        return script["answer"]
    choice = (body.get("structured_outputs") or {}).get("choice")
    return choice[0] if choice else "ok"


async def _wait_unless_abandoned(request: web.Request, delay: float) -> bool:
    """Sleep `delay` seconds; False as soon as the client closes the connection (a cancelled call)."""
    until = time.monotonic() + delay
    while (left := until - time.monotonic()) > 0:
        await asyncio.sleep(min(POLL_S, left))
        if request.transport is None or request.transport.is_closing():
            return False
    return True


def _logprobs(script: dict[str, Any], chat: bool, answer: str) -> Any:
    top = {answer: -0.01} if script["logprobs"] == "answer" else script["logprobs"]
    if not top:
        return None
    if chat:
        first = max(top, key=top.get)
        return {"content": [{"token": first, "logprob": top[first],
                             "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()]}]}
    return {"tokens": [max(top, key=top.get)], "top_logprobs": [top]}


async def completion(request: web.Request) -> web.StreamResponse:
    members: Members = request.app[MEMBERS]
    name = request.match_info["name"]
    script = members.script(name)
    members.calls[name] = members.calls.get(name, 0) + 1
    body = await request.json(loads=orjson.loads)
    members.last[name] = body
    members.headers[name] = dict(request.headers)
    delay = script["latency_ms"] / 1000
    if script["jitter_ms"]:
        rng = members.rngs.setdefault(name, random.Random(name))
        delay += rng.expovariate(1000 / script["jitter_ms"])
    if delay and not await _wait_unless_abandoned(request, delay):
        members.cancelled[name] = members.cancelled.get(name, 0) + 1
        return web.Response(status=499)
    if script["drop"]:
        request.transport.close()
        raise ConnectionResetError("dropped on purpose")
    if script["fail"]:
        status = script["fail"].pop(0)
        headers = {"Retry-After": str(script["retry_after"])} if script["retry_after"] is not None else None
        err = {"error": {"message": f"scripted failure {status}", "type": "server_error", "param": None,
                         "code": None}}
        return web.Response(body=orjson.dumps(err), status=status, content_type="application/json", headers=headers)
    if script["raw"] is not None:
        return web.Response(body=orjson.dumps(script["raw"]), content_type="application/json")
    chat = request.path.endswith("/chat/completions")
    prompts = body.get("prompt") if not chat and isinstance(body.get("prompt"), list) else None
    members.prompts[name] = members.prompts.get(name, 0) + (len(prompts) if prompts is not None else 1)
    prompt_tokens, completion_tokens = script["usage"]
    n = len(prompts) if prompts is not None else 1
    usage = {"prompt_tokens": n * prompt_tokens, "completion_tokens": n * completion_tokens,
             "total_tokens": n * (prompt_tokens + completion_tokens)}
    if body.get("stream"):
        return await _stream(request, body, _answer(script, body), usage, script)
    if chat:
        answer = _answer(script, body)
        choices = [{"index": 0, "finish_reason": "stop", "logprobs": _logprobs(script, chat, answer),
                    "message": {"role": "assistant", "content": answer}}]
    else:  # vLLM: one choice per prompt of a list, `index` = the prompt's position
        answers = [_answer(script, body, p) for p in (prompts if prompts is not None else [None])]
        choices = [{"index": i, "finish_reason": "stop", "logprobs": _logprobs(script, chat, a), "text": a}
                   for i, a in enumerate(answers)]
        if body.get("prompt_logprobs") is not None:
            for choice, prompt in zip(choices, prompts if prompts is not None else [body.get("prompt", "")]):
                choice["prompt_logprobs"] = _prompt_logprobs(script, str(prompt))
    data = {"id": "fake-1", "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": body.get("model", name), "choices": choices, "usage": usage}
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def _prompt_logprobs(script: dict[str, Any], prompt: str) -> list[Any]:
    """vLLM's `prompt_logprobs` of one prompt: None for the first token, then {token id: {logprob, rank,
    decoded_token}}, the prompt's own token only (`prompt_logprobs: 0`)."""
    tokens = re.findall(r"\s*\S+", prompt)
    logprobs = [-0.5] * len(tokens)
    for label, logprob in script["label_logprobs"].items():
        if prompt.endswith(" " + label):
            size = len(re.findall(r"\s*\S+", " " + label))
            logprobs[len(tokens) - size:] = [float(logprob)] + [0.0] * (size - 1)
    return [None, *({str(i): {"logprob": lp, "rank": 1, "decoded_token": tok}}
                     for i, (tok, lp) in enumerate(zip(tokens[1:], logprobs[1:]), start=1))]


async def _stream(request: web.Request, body: dict[str, Any], answer: str, usage: dict[str, int],
                  script: dict[str, Any]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    words = answer.split(" ") * 3
    for i, word in enumerate(words):
        if i and script["stream_gap_ms"] and not await _wait_unless_abandoned(request, script["stream_gap_ms"] / 1000):
            members: Members = request.app[MEMBERS]
            name = request.match_info["name"]
            members.cancelled[name] = members.cancelled.get(name, 0) + 1
            return resp
        chunk = {"id": "fake-s", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                 "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if script["cut_stream"] and i == 1:
            await asyncio.sleep(0.05)
            request.transport.abort()
            return resp
    final = {"id": "fake-s", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
    await resp.write(b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def health(request: web.Request) -> web.Response:
    script = request.app[MEMBERS].script(request.match_info["name"])
    return web.Response(status=503 if script["down"] else 200, text="")


async def vllm_metrics(request: web.Request) -> web.Response:
    queue = request.app[MEMBERS].script(request.match_info["name"])["queue"]
    if queue is None:
        return web.Response(status=404, text="no metrics")
    waiting, running = queue
    text = ("# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{engine="0",model_name="fake"}} {float(waiting)}\n'
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="fake"}} {float(running)}\n')
    return web.Response(text=text, content_type="text/plain")


async def models(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    script = request.app[MEMBERS].script(name)
    if script["down"]:
        return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=503)
    request.app[MEMBERS].last[f"{name}:models"] = dict(request.headers)
    return web.json_response({"object": "list", "data": [{"id": name, "object": "model"}]})


async def set_script(request: web.Request) -> web.Response:
    request.app[MEMBERS].set_script(request.match_info["name"], await request.json())
    return web.json_response({"ok": True})


async def get_calls(request: web.Request) -> web.Response:
    return web.json_response(request.app[MEMBERS].report(request.match_info["name"]))


async def reset(request: web.Request) -> web.Response:
    request.app[MEMBERS].__init__()
    return web.json_response({"ok": True})


MEMBERS = web.AppKey("members", Members)


def make_app(members: Members | None = None) -> web.Application:
    """The server's app; `members` shares the scripts and counts with a handle in this process."""
    app = web.Application()
    app[MEMBERS] = members if members is not None else Members()
    app.router.add_post("/m/{name}/v1/chat/completions", completion)
    app.router.add_post("/m/{name}/v1/completions", completion)
    app.router.add_get("/m/{name}/health", health)
    app.router.add_get("/m/{name}/v1/models", models)
    app.router.add_get("/m/{name}/metrics", vllm_metrics)
    app.router.add_post("/_script/{name}", set_script)
    app.router.add_get("/_calls/{name}", get_calls)
    app.router.add_post("/_reset", reset)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
