PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CODE := bot handlers storage

.PHONY: run sandbox test lint typecheck unit bench bench-rss soak clean

# The venv is rebuilt only when pyproject.toml changes.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/python -m bot

# The bridge against its built-in Telegram and AdTarget simulators: no token, no network.
sandbox: $(BIN)/.installed
	$(BIN)/python -m bot sandbox

lint: $(BIN)/.installed
	$(BIN)/ruff check $(CODE) tests bench
	$(BIN)/ruff format --check $(CODE) tests bench

typecheck: $(BIN)/.installed
	$(BIN)/mypy $(CODE)

# The browser test needs Debian's chromium; the script installs it when run as root.
unit: $(BIN)/.installed
	bash .ci/ensure-chromium
	$(BIN)/pytest

test: lint typecheck unit

bench: $(BIN)/.installed
	$(BIN)/python -m bench.suite

# Peak RSS over 100,000 joins, bridge and baseline side by side (about 6 minutes;
# `make bench` measures it over 20,000 to stay within 10 minutes).
bench-rss: $(BIN)/.installed
	$(BIN)/python -m bench.suite --rss-only --rss-joins 100000

# 30 minutes of mixed traffic with faults and a SIGKILL; not part of `make test`.
soak: $(BIN)/.installed
	$(BIN)/python -m bench.soak --minutes 30

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
