# The two commands of the README. Everything they need is installed here, nothing by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export LITELLM_LOCAL_MODEL_COST_MAP := True
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast test-real install engines clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import gateway, routers, ensembles"
	touch $@

install: $(BIN)/.installed

engines:
	deploy/engines.sh all

test-fast: install
	deploy/system.sh
	$(BIN)/pytest -q

test-real: install engines
	$(BIN)/pytest -q -m real -s

test: test-fast test-real

demo: install engines
	$(BIN)/crowd-gateway demo

clean:
	rm -rf $(VENV)
