"""Convert a GGUF model file into a safetensors model directory that vLLM's CPU build can load.

Why: current vLLM no longer loads GGUF, while the small models ship as GGUF inside PyPI packages.
Runs as a script under the vLLM venv's python (it needs torch and transformers, which the gateway's
own environment does not have): python gguf_to_hf.py FILE.gguf OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(gguf_file: Path, out_dir: Path) -> None:
    """Dequantise the GGUF weights into a fresh model built from its config and save it with its tokenizer.

    Copying into a freshly built model (rather than saving the GGUF-loaded one) drops loader-specific
    state and keeps tied embeddings tied; the tokenizer keeps the GGUF's chat template.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = torch.bfloat16
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(fresh)]
    if missing or unexpected:
        raise SystemExit(f"weights do not match the config: missing={missing} unexpected={unexpected}")
    fresh.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out_dir)


def _tied_keys(model: object) -> set[str]:
    """Parameter names that are aliases of another parameter (e.g. lm_head tied to the embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied if isinstance(tied, (list, tuple, set)) else tied.keys())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: gguf_to_hf.py FILE.gguf OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
