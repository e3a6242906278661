"""The `pool:` section of a config: the local model servers, and the command line that starts each one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, ValidationError

from gateway.config import Config, ConfigError, Strict
from gateway.tools.localmodels import model_path, venv_python

HOST = "127.0.0.1"


class PoolServer(Strict):
    """One local model server started by `crowd-gateway pool up` (CPU, real small models)."""

    name: str
    engine: Literal["vllm", "llamacpp"]
    model: Literal["smollm2-135m-instruct", "gemma3-270m"]
    port: int = Field(ge=1024, le=65535)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment of the server process (e.g. VLLM_CPU_OMP_THREADS_BIND to pin it to a core)."""


class Pool(Strict):
    servers: list[PoolServer] = Field(min_length=1)
    ready_timeout_s: float = Field(600.0, gt=0)


class PoolError(Exception):
    """The pool cannot be brought to the asked state; the message names the server and what to do."""


@dataclass(frozen=True)
class Launch:
    """How to start one server."""

    argv: list[str]
    env: dict[str, str]


def launch(server: PoolServer) -> Launch:
    """The engine command line for a server, from its cached venv and prepared model files."""
    python = str(venv_python(server.engine))
    model = str(model_path(server.engine, server.model))
    if server.engine == "vllm":
        # -O0 skips torch.compile: measured on 2 cores, ready in 30-45 s instead of 100-190 s (vLLM 0.32
        # fails to reload its compile cache, so it recompiles on every start) at the same request rate.
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                "--served-model-name", server.model, "--max-model-len", "2048", "--dtype", "bfloat16", "-O0"]
        env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    else:
        argv = [python, "-m", "llama_cpp.server", "--model", model, "--model_alias", server.model,
                "--n_ctx", "2048"]
        if server.model == "gemma3-270m":
            argv += ["--chat_format", "gemma"]
        env = {}
    argv += ["--host", HOST, "--port", str(server.port), *server.args]
    return Launch(argv, env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} | server.env)


def pool_of(config: Config | Pool) -> Pool:
    if isinstance(config, Pool):
        pool = config
    elif config.pool is None:
        raise PoolError("the config has no `pool:` section")
    else:
        try:
            pool = Pool.model_validate(config.pool)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"invalid config: pool.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    for attr in ("name", "port"):
        values = [getattr(s, attr) for s in pool.servers]
        if dupes := sorted({v for v in values if values.count(v) > 1}):
            raise PoolError(f"pool servers share a {attr}: {dupes}")
    return pool
