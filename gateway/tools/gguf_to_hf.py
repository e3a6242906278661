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
    if _adds_bos(gguf_file):
        _prepend_bos(tokenizer)
    tokenizer.save_pretrained(out_dir)


def _adds_bos(gguf_file: Path) -> bool:
    """Whether the GGUF says prompts start with BOS (llama.cpp honours it; the converted tokenizer must too)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_file)).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.parts[field.data[0]][0])


def _prepend_bos(tokenizer: object) -> None:
    """Make the fast tokenizer add BOS itself: Gemma without its <bos> answers near chance."""
    from tokenizers.processors import TemplateProcessing

    bos = tokenizer.bos_token  # type: ignore[attr-defined]
    bos_id = tokenizer.convert_tokens_to_ids(bos)  # type: ignore[attr-defined]
    backend = tokenizer._tokenizer  # type: ignore[attr-defined]
    backend.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                special_tokens=[(bos, bos_id)])
    tokenizer.add_bos_token = True  # type: ignore[attr-defined]


def _tied_keys(model: object) -> set[str]:
    """Parameter names that are aliases of another parameter (e.g. lm_head tied to the embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied if isinstance(tied, (list, tuple, set)) else tied.keys())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: gguf_to_hf.py FILE.gguf OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
