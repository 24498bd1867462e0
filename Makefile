# `make demo` and `make test` work on a fresh machine with Python 3.11 and pip: each creates
# .venv and installs the pinned dependency tree (requirements/lock.txt) plus Kiln itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck install clean chromium postgres docker-test-deps render-image

# The tests start a real PostgreSQL server (tests/postgres.py) with initdb/pg_ctl from PATH or
# /usr/lib/postgresql/*/bin; when neither has them, install Debian's package (as root, or via sudo).
PG_FOUND = $(shell command -v initdb >/dev/null 2>&1 && echo yes || (ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && echo yes))
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml setup.py requirements/lock.txt kiln/executors/_spawn.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check kiln tests examples bench
	$(BIN)/ruff format --check kiln tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The dashboard's browser tests (tests/ui) drive Debian's Chromium through Playwright; a no-op when present.
chromium:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

postgres:
ifneq ($(PG_FOUND),yes)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
endif

# The Docker executor's tests start their own dockerd and import a busybox image (no registry);
# the render image is built from a debootstrap base. They need Debian's docker.io, busybox-static
# and debootstrap, installed here when missing (a no-op otherwise).
docker-test-deps:
	@if ! command -v dockerd >/dev/null 2>&1 || ! dpkg -s busybox-static >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io busybox-static debootstrap; \
	  else echo "docker.io/busybox-static/debootstrap missing and not installable here (needs root and apt): Docker tests will skip"; fi; \
	fi

# Kiln's render image (docker/build-render-image.sh) for tests/render/test_docker_render.py, built
# before pytest into a Docker data root cached on this machine (tests/render_image.py): minutes
# the first time, about a minute after a change to kiln/, nothing when current. Where it cannot be
# built (no root, no Docker) this prints why and the render image tests skip with that reason.
render-image: $(STAMP) docker-test-deps
	$(BIN)/python -m tests.render_image

# Two pytest-xdist workers (tests/conftest.py groups what must share one worker): the suite waits on
# servers, jobs and clusters more than it computes, so even two cores overlap much of it.
# PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
test: lint typecheck chromium postgres docker-test-deps render-image
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadscope

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
