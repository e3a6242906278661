# The two commands of the README. Everything they need is installed here, nothing by hand.
# The gateway's venv (.venv) is made with uv from its cache in seconds, its packages compiled to bytecode at install
# (uv does not by default: where PYTHONDONTWRITEBYTECODE is set, as on this machine, every test process and gateway
# process would compile scikit-learn, scipy and FastAPI from source again, 3-4 s each); the engines live in
# ~/.cache/crowd-gateway (deploy/engines.sh), so a fresh clone reuses them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= $(or $(CROWD_CACHE),$(HOME)/.cache/crowd-gateway)
UV_VERSION := 0.13.9
UV := $(CACHE)/uv-$(UV_VERSION)/bin/uv
export LITELLM_LOCAL_MODEL_COST_MAP := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast test-real test-image lock install engines clean

$(UV):
	$(PY) -m venv $(CACHE)/uv-$(UV_VERSION)
	$(CACHE)/uv-$(UV_VERSION)/bin/pip install -q "uv==$(UV_VERSION)" 2>&1 | grep -v "^WARNING: Location" || true

$(BIN)/.installed: pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python $(PY) $(VENV)
	$(UV) pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'
	$(BIN)/python -c "import gateway, routers, ensembles"
	touch $@

install: $(BIN)/.installed

# The image's lock: every package of pyproject.toml's dependencies, its `otel` extra (traces) and its build-system, pinned with hashes
# for any Python and platform the base image may have (deploy/Dockerfile installs it with --require-hashes).
# Regenerate after changing a pin in pyproject.toml; versions already locked stay unless the pins exclude them.
LOCK := deploy/requirements.lock
lock: | $(UV)
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV) pip compile -q --universal --generate-hashes --extra otel -o $(LOCK) pyproject.toml - \
	    --custom-compile-command "make lock  (uv pip compile pyproject.toml --extra otel + its build-system.requires, universal, hashed)"

# The local pool runs on vLLM's CPU build only (deploy/engines.sh llamacpp installs llama.cpp, optional).
engines:
	deploy/engines.sh vllm

# The npm client of the SDK matrix is installed by its test (tests/sdk/install.py), once per lock, into $(CACHE).
test-fast: install
	deploy/system.sh
	$(BIN)/pytest -q

test-real: install engines
	$(BIN)/pytest -q -m real -s

# The container image, built with podman and run locked down (deploy/image.sh installs podman, runc,
# mmdebstrap and slirp4netns from Debian when missing; the base and dependency layers stay cached).
test-image: install
	$(BIN)/pytest -q -s -m image

# Every tier runs whatever the others did; each one's result is printed, and the run fails at the end if any failed.
test: install
	tests/tiers.sh fast real image

demo: install engines
	$(BIN)/crowd-gateway demo

clean:
	rm -rf $(VENV)
