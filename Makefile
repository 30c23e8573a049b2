# Two entry points for a fresh machine: `make quickstart` and `make test`.
# Each creates the virtual environment on first use: torch 2.13.0 first (a CPU build on
# the dev/CI machines; any plain `torch` requirement it does not satisfy would pull a
# multi-GB CUDA build), then objkit in editable mode with its dev extras, then the example
# third-party plugin distribution (installed like a stranger's: pip install -e its folder).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
EXAMPLE_PLUGIN := examples/objkit-translation-ranking
EXAMPLE_STAMP := $(VENV)/.objkit-translation-ranking

.PHONY: install quickstart test wheel-check perf bench-ablation clean

$(BIN)/objkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(EXAMPLE_STAMP): $(BIN)/objkit $(EXAMPLE_PLUGIN)/pyproject.toml
	$(BIN)/python -m pip install --quiet -e $(EXAMPLE_PLUGIN)
	touch $@

install: $(BIN)/objkit $(EXAMPLE_STAMP)

quickstart: $(BIN)/objkit
	$(BIN)/objkit run quickstart -o runs/quickstart

# objkit's suite, then the example plugin's own suite (its tests and objkit's conformance
# kit on it) from its folder, as its author would run it
test: $(BIN)/objkit $(EXAMPLE_STAMP)
	$(BIN)/python -m pytest
	cd $(EXAMPLE_PLUGIN) && $(abspath $(BIN))/python -m pytest

# The wheel as a user installs it: build + twine check, a fresh virtual environment with the
# wheel, and objkit run from outside the checkout (.ci/wheel_check.sh; a few minutes).
wheel-check: $(BIN)/objkit
	TORCH="$(TORCH)" PYTHON="$(PYTHON)" PY="$(abspath $(BIN))/python" bash .ci/wheel_check.sh

# The performance suite (benchmarks/README.md); --markdown writes the README's Performance table.
perf: $(BIN)/objkit
	$(BIN)/python benchmarks/run.py --quick --json bench-out/perf.json --markdown bench-out/perf.md

clean:
	rm -rf runs .pytest_cache

.PHONY: docs
# The documentation site (mkdocs.yml, docs/), built with --strict: a broken link, a page missing
# from the nav or any other warning fails. Built into a temporary folder, removed afterwards.
docs: $(BIN)/objkit
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && $(BIN)/mkdocs build --strict --quiet -d "$$site" && echo "docs: mkdocs build --strict passed"
