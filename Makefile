# One entry point for people and CI. Everything is bootstrapped from plain python3:
# a virtualenv, a pinned uv inside it, then the locked dependencies (uv.lock).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
HOST ?= 127.0.0.1
PORT ?= 8000
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON_DOWNLOADS := never
# The browser tests: Debian's Chromium (browsers cannot be downloaded by Playwright here) and
# axe-core from npm, locked in tests/browser/package-lock.json.
BROWSER  := tests/browser
CHROMIUM := /usr/bin/chromium
# Noto fonts, so that screenshots show Thai, Burmese and Khmer names as people's phones do.
FONTS    := /usr/share/fonts/truetype/noto/NotoSansMyanmar-Regular.ttf
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The HTTP load generator of `concord bench --suite e2e` (and its smoke test).
WRK      := /usr/bin/wrk

.PHONY: install run test lint migrate demo bench clean lock

install: $(VENV)/.installed $(CHROMIUM) $(FONTS) $(WRK) $(BROWSER)/node_modules/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv sync --locked --inexact --all-extras --quiet --compile-bytecode
	@touch $@

# Our own modules compiled ahead too: where PYTHONDONTWRITEBYTECODE is set, every process the
# suite or `make run` starts (API workers, Celery, beat) would otherwise compile every module
# it imports (5.0 -> 2.4 s to import the API and the worker, measured). Only changed files
# are compiled again.
BYTECODE := $(BIN)/python -m compileall -q -j 0 api infra services workers migrations tests

$(CHROMIUM) $(FONTS):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-noto-core

$(WRK):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk

$(BROWSER)/node_modules/.installed: $(BROWSER)/package.json $(BROWSER)/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq npm; }
	cd $(BROWSER) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: install
	@$(BYTECODE) >/dev/null
	$(BIN)/concord migrate
	$(BIN)/concord demo
	$(BIN)/concord serve --host $(HOST) --port $(PORT)

demo: install
	$(BIN)/concord demo

migrate: install
	$(BIN)/concord migrate

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of
# them: each process has its own databases and Celery queue (tests/conftest.py).
TEST_WORKERS ?= 2

test: install
	@$(BYTECODE) >/dev/null
	$(BIN)/python -m tests.run -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/concord bench

lock: install
	$(BIN)/uv lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache $(BROWSER)/node_modules
