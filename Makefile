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

# The browser test (tests/test_traces_ui.py) drives Debian's chromium through chromium-driver; install both when
# missing so it runs on a fresh machine and in CI (as root, or through sudo where there is one).
install: $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

demo: install
	$(BIN)/reasoner demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/rollout.py --quick
	$(BIN)/python benchmarks/traces.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
