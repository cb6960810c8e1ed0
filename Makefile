PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CODE := bot handlers storage

.PHONY: run sandbox test lint typecheck unit bench bench-rss soak clean

# Two stamps, both rebuilt when pyproject.toml changes: the runtime dependencies,
# all that `make run` and `make sandbox` need, and on top of them the dev extras
# (pytest, ruff, mypy, playwright: some 170 MB the bot never uses) for the checks.
# `make run` after `make test` finds its stamp and installs nothing; `make test`
# after `make run` adds only the extras.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(RUNTIME)
	$(BIN)/joinbridge

# The bridge against its built-in Telegram and AdTarget simulators: no token, no
# network. `make sandbox ARGS="--port 9000"` passes arguments on.
#
# Ctrl-C is how one leaves the sandbox, and it then exits 0. The terminal sends
# SIGINT to its whole foreground process group, make included, and a make that
# gets SIGINT waits for its child and then kills itself with it (status 130),
# whatever the child's status. Job control (set -m) runs the sandbox in a process
# group of its own that the shell makes the terminal's foreground, so Ctrl-C
# reaches the sandbox alone and make passes its 0 on. The `exit` keeps the shell
# from exec'ing the sandbox in its place: the shell hands the terminal back.
sandbox: $(RUNTIME)
	@set -m 2>/dev/null; $(BIN)/joinbridge sandbox $(ARGS); exit $$?

lint: $(DEV)
	$(BIN)/ruff check $(CODE) tests bench
	$(BIN)/ruff format --check $(CODE) tests bench

typecheck: $(DEV)
	$(BIN)/mypy $(CODE)

# The browser test needs Debian's chromium, the PostgreSQL tests PostgreSQL's server
# binaries (they start a throwaway server themselves); the scripts install them when run
# as root. JOINBRIDGE_REQUIRE_POSTGRES=1: a PostgreSQL test that gets no server fails
# rather than skips (a bare `.venv/bin/pytest` skips them). Then the end-to-end suite
# once more with every bridge on PostgreSQL (`--engine postgres`; the tests marked
# one_engine, which pick their engine themselves, ran in the first pass).
unit: $(DEV)
	bash .ci/ensure-chromium
	bash .ci/ensure-postgres
	JOINBRIDGE_REQUIRE_POSTGRES=1 $(BIN)/pytest
	JOINBRIDGE_REQUIRE_POSTGRES=1 $(BIN)/pytest tests/e2e --engine postgres

test: lint typecheck unit

bench: $(DEV)
	$(BIN)/python -m bench.suite

# Peak RSS over 100,000 joins, bridge and baseline side by side (about 6 minutes;
# `make bench` measures it over 20,000 to stay within 10 minutes).
bench-rss: $(DEV)
	$(BIN)/python -m bench.suite --rss-only --rss-joins 100000

# 30 minutes of mixed traffic with faults and a SIGKILL; not part of `make test`.
soak: $(DEV)
	$(BIN)/python -m bench.soak --minutes 30

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
