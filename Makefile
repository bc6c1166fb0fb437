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

# Runs the host (`legion daemon`) in the foreground, in a terminal or not; Ctrl-C stops
# it. The first time it writes the documented example config (`legion config path`; it
# starts no agent). Before the host starts it says what is still missing, e.g. a provider
# key (`legion doctor --quick`). The TUI is `legion`, in another terminal: it attaches.
run: install
	@test -f "$$($(BIN)/legion config path)" || $(BIN)/legion config init
	@$(BIN)/legion doctor --quick >&2 || echo "legion: the host starts anyway; fix the FAIL lines above (each says how), then check with \`legion doctor\`" >&2
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
