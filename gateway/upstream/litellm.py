"""Members reached through litellm: external providers (OpenAI, Anthropic, ...) for escalation.

Why litellm only here: it knows every provider's API and price, but adds milliseconds per call,
so the vLLM pool path calls its servers directly and only `dialect: litellm` members come here.
The answer is re-serialised as an OpenAI body so the rest of the path does not care.
"""

from __future__ import annotations

import asyncio
import os
import time
from functools import lru_cache
from typing import Any

import orjson

from gateway.config import ConfigError, Member
from gateway.upstream.reply import Reply

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price map from the network


@lru_cache(maxsize=1)
def _litellm() -> Any:
    import litellm

    litellm.suppress_debug_info = True
    return litellm


class LiteLLMTransport:
    """Calls one member through litellm; provider errors come back as replies with the provider's status."""

    def __init__(self, member: Member) -> None:
        self.member = member

    async def send(self, path: str, body: bytes) -> Reply:
        litellm = _litellm()
        member = self.member
        data = orjson.loads(body)
        data.pop("model", None)
        call = litellm.atext_completion if path == "/completions" else litellm.acompletion
        started = time.perf_counter()
        try:
            resp = await call(model=member.model, api_base=member.base_url, api_key=member.api_key() or "unused",
                              timeout=member.timeout_s, num_retries=0, **data)
        except Exception as exc:  # litellm maps every provider failure to an exception with a status
            status = int(getattr(exc, "status_code", 502) or 502)
            error = {"error": {"message": str(exc)[:500], "type": type(exc).__name__, "param": None, "code": None}}
            return Reply(status, orjson.dumps(error), "application/json", time.perf_counter() - started)
        return Reply(200, resp.model_dump_json().encode(), "application/json", time.perf_counter() - started)


async def preload() -> None:
    """Import litellm in a thread at startup (it takes seconds), so no request or probe waits for it."""
    try:
        await asyncio.to_thread(_litellm)
    except ImportError:
        raise ConfigError("a member has dialect: litellm, but litellm is not installed: "
                          "pip install 'crowd-gateway[litellm]'") from None


def price_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """The provider's list price from litellm's bundled map; 0 for models it does not know."""
    try:
        prompt, completion = _litellm().cost_per_token(model=model, prompt_tokens=prompt_tokens,
                                                       completion_tokens=completion_tokens)
    except Exception:  # unknown model: litellm raises; the member's own configured price applies instead
        return 0.0
    return float(prompt + completion)
