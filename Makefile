# StreamSSM developer tasks.
#
#   make serve        - run the Panel app on http://$(ADDRESS):$(PORT)/app
#   make test         - install test extras + Debian Chromium, run pytest on 2 CPUs (25 slowest tests listed)
#   make test-fast    - engine and app unit tests only (no browser, notebooks or Ray)
#   make walkthrough  - drive every tab of the served app as a new user, one PNG per step
#   make bench        - install bench extras, run every bench/*.py in order
#
# Each install level has its own stamp file inside .venv, rebuilt whenever
# pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
UV          := $(VENV)/bin/uv
UV_INSTALL  := $(UV) pip install --python $(VPY)

ADDRESS     ?= 127.0.0.1
PORT        ?= 5006
# the largest websocket message the server buffers: an upload arrives in 2 MB chunks (2.7 MB
# as base64), so nothing the page sends needs more; Bokeh's default is 20 MB
WS_MAX_BYTES ?= 4194304
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
# pytest-xdist: tests run on TEST_WORKERS processes (0: in this one), a module's tests on one of
# them, the browser tests all on one, the longest groups first (tests/conftest.py groups and orders them).
PARALLEL    := -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
RAY_TESTS   := tests/engine/test_cluster.py
DURATIONS   := --durations=25
WALKTHROUGH_ARGS ?=
SCREENSHOTS := app/assets/screenshots
CHROMIUM    := /usr/bin/chromium

BENCH_SCRIPTS := $(sort $(wildcard bench/*.py))

# Use sudo for apt only when not root and sudo exists.
SUDO := $(shell if [ "$$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)

.PHONY: help venv venv-serve venv-test venv-bench serve chromium test test-fast walkthrough bench screenshots clean \
	distclean

help:
	@echo "Targets:"
	@echo "  make venv         create .venv and install the package with test extras"
	@echo "  make serve        serve the app on http://$(ADDRESS):$(PORT)/app  (PORT=, ADDRESS= to override)"
	@echo "  make test         run the whole test suite on TEST_WORKERS=2 processes and list the 25 slowest tests"
	@echo "                    (installs Debian chromium if missing; PYTEST_ARGS=...)"
	@echo "  make test-fast    engine and app unit tests: no browser, notebook or Ray tests (PYTEST_ARGS=...)"
	@echo "  make walkthrough  serve the app, drive every tab in headless chromium as a new user would,"
	@echo "                    one PNG per step in a temporary folder (WALKTHROUGH_ARGS=\"--out DIR\")"
	@echo "  make screenshots  the walkthrough, writing the README's screenshots to $(SCREENSHOTS)/"
	@echo "  make bench        run every bench/*.py script"
	@echo "  make chromium     install Debian's chromium for the browser tests"
	@echo "  make clean        remove caches and build artifacts (distclean also removes .venv)"

# --- virtual environment -----------------------------------------------------

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(UV): | $(VPY)
	$(VPY) -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed-serve: pyproject.toml | $(UV)
	$(UV_INSTALL) -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(UV)
	$(UV_INSTALL) -e ".[test]"
	$(UV_INSTALL) --no-deps "particles>=0.4"   # its numpy<2 pin conflicts with jax; it runs on numpy 2
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(UV)
	$(UV_INSTALL) -e ".[bench]"
	@touch $@

venv: $(VENV)/.installed-test
venv-serve: $(VENV)/.installed-serve
venv-test: $(VENV)/.installed-test
venv-bench: $(VENV)/.installed-bench

# --- app ---------------------------------------------------------------------

# `panel serve app` serves the directory-format app (app/main.py, with
# app/app_hooks.py for server start/stop) under the route /app.
serve: $(VENV)/.installed-serve
	$(VENV)/bin/panel serve app --address $(ADDRESS) --port $(PORT) \
		--websocket-max-message-size=$(WS_MAX_BYTES) \
		--allow-websocket-origin=$(ADDRESS):$(PORT) \
		--allow-websocket-origin=localhost:$(PORT)

# --- browser for the UI tests --------------------------------------------------

chromium:
	@if [ -x $(CHROMIUM) ]; then \
		echo "chromium: $(CHROMIUM) present"; \
	else \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

# --- tests & benchmarks ------------------------------------------------------

# The tests that start a real Ray cluster run in a pytest process of their own: a Ray
# driver keeps native threads after ray.shutdown() that must not share a process with
# the rest of the suite. Exit status 5 ("no tests selected") is not a failure.
test: $(VENV)/.installed-test chromium
	$(VPY) -m pytest $(PARALLEL) --ignore=$(RAY_TESTS) $(DURATIONS) $(PYTEST_ARGS)
	$(VPY) -m pytest $(RAY_TESTS) $(DURATIONS) $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The inner loop: the engine's and the app's own tests, without the headless browser, the
# notebooks or a Ray cluster.
test-fast: $(VENV)/.installed-test
	$(VPY) -m pytest $(PARALLEL) tests/engine tests/app --ignore=$(RAY_TESTS) -m "not browser and not ray" $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	@if [ -z "$(BENCH_SCRIPTS)" ]; then echo "bench: no bench/*.py scripts yet"; fi
	@for f in $(BENCH_SCRIPTS); do \
		echo "=== $$f"; \
		$(VPY) "$$f"; \
	done

# Serve the app on a free loopback port and drive every tab in headless chromium, one PNG per
# step; fails when a step fails or the browser's console shows errors.
walkthrough: $(VENV)/.installed-test chromium
	$(VPY) -m tests.ui.walkthrough $(WALKTHROUGH_ARGS)

# The README's screenshots are the walkthrough's PNGs.
screenshots: $(VENV)/.installed-test chromium
	$(VPY) -m tests.ui.walkthrough --out $(SCREENSHOTS)

# --- housekeeping ------------------------------------------------------------

clean:
	rm -rf .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
