# legion: `make run` installs and starts the host; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test check lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap
	PYTHON=$(PYTHON) scripts/bootstrap $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Runs the host in the foreground with the documented example config the first
# time (edit it with `$(BIN)/legion config path`). Ctrl-C stops it.
run: install
	@$(BIN)/legion config path >/dev/null
	@test -f "$$($(BIN)/legion config path)" || $(BIN)/legion config init
	$(BIN)/legion daemon

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check legion agent_container browser_container tui tests bench
	$(BIN)/ruff format --check legion agent_container browser_container tui tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

check: lint test

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
