# Two entry points on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# CPU torch: a bare `torch` pulls a multi-GB CUDA build. Override for GPU machines.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/reasoner demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/rollout.py --quick
	$(BIN)/python benchmarks/traces.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
