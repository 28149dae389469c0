# One entry point: CI runs the same targets a developer runs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEB_PACKAGES := systemd dbus-user-session mosquitto prometheus prometheus-alertmanager polkitd openssl \
	etcd-server etcd-client iproute2 debootstrap systemd-container faketime chromium chromium-driver \
	monit prometheus-blackbox-exporter
STATE_DIR ?= $(CURDIR)/run/state
METRICS_PORT ?= 9477

.PHONY: setup deb run test e2e check lock lock-check bench sim clean install uninstall

# `make install` (root): venv under $(PREFIX)/venv, unit, polkit rule, example goals, the user.
# DESTDIR=/some/dir stages everything there and leaves the host alone (no user, no systemctl).
DESTDIR ?=
PREFIX ?= /opt/setpoint
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
POLKITDIR ?= /etc/polkit-1/rules.d
INSTALL_PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
INSTALL_ENV = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" SYSCONFDIR="$(SYSCONFDIR)" \
	UNITDIR="$(UNITDIR)" POLKITDIR="$(POLKITDIR)" PYTHON="$(INSTALL_PYTHON)"

setup: $(STAMP) deb

# Exactly the locked versions (with hashes), never whatever the index serves today.
$(STAMP): pyproject.toml requirements/dev.txt requirements/build.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements/build.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The lock: uv.lock (one resolution for everything) and its two exports, which pip installs:
# requirements/dev.txt (`make setup`) and requirements/runtime.txt (`make install`);
# requirements/build.txt pins the build backend both use.
LOCK_EXPORT = $(BIN)/uv export --frozen --no-emit-project --format requirements-txt --quiet

lock: $(STAMP)
	$(BIN)/uv lock --upgrade
	$(LOCK_EXPORT) --extra dev -o requirements/dev.txt
	$(LOCK_EXPORT) -o requirements/runtime.txt
	$(BIN)/uv pip compile --quiet --upgrade --generate-hashes requirements/build.in -o requirements/build.txt

# Fails when pyproject.toml and the lock disagree, or an export is stale: run `make lock`.
lock-check: $(STAMP)
	@$(BIN)/uv lock --locked --offline --quiet || { echo "uv.lock does not match pyproject.toml: run make lock" >&2; exit 1; }
	@for f in dev runtime; do \
	  extra=$$([ $$f = dev ] && echo --extra dev); \
	  $(LOCK_EXPORT) $$extra | diff -q <(grep -v '^#' requirements/$$f.txt) <(grep -v '^#' -) >/dev/null \
	    || { echo "requirements/$$f.txt is stale: run make lock" >&2; exit 1; }; \
	done

# Debian packages the tests need; installed only when running as root and missing.
deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "not root: skipping Debian packages ($$missing); tests needing them will skip"; fi; \
	fi

run: setup
	$(BIN)/python deploy/demo/run.py --state-dir $(STATE_DIR) --metrics-port $(METRICS_PORT)

test: setup
	$(BIN)/pytest -q -x --durations=10 --ignore=tests/e2e

# Whole hosts: a booted Debian under systemd-nspawn, several hosts in network namespaces (root).
e2e: setup
	$(BIN)/pytest -q -x --durations=10 tests/e2e

check: $(STAMP) lock-check
	$(BIN)/ruff check agent tests bench deploy
	$(BIN)/ruff format --check agent tests bench deploy
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m tests.layers

bench: setup
	$(BIN)/python -m bench

sim: setup
	SETPOINT_SIM_STEPS=200000 $(BIN)/pytest -q tests/core/test_simulation.py

install:
	$(INSTALL_ENV) deploy/install.sh install

uninstall:
	$(INSTALL_ENV) deploy/install.sh uninstall

clean:
	rm -rf $(VENV) run .mypy_cache .ruff_cache .pytest_cache
