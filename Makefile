# One entry point: CI runs the same targets a developer runs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEB_PACKAGES := systemd dbus-user-session mosquitto prometheus prometheus-alertmanager polkitd openssl
STATE_DIR ?= $(CURDIR)/run/state
METRICS_PORT ?= 9477

.PHONY: setup deb run test check bench sim clean install uninstall

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

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

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
	$(BIN)/pytest -q -x --durations=10

check: $(STAMP)
	$(BIN)/ruff check agent tests bench deploy
	$(BIN)/ruff format --check agent tests bench deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m bench

sim: setup
	SETPOINT_SIM_STEPS=200000 $(BIN)/pytest -q tests/test_simulation.py

install:
	$(INSTALL_ENV) deploy/install.sh install

uninstall:
	$(INSTALL_ENV) deploy/install.sh uninstall

clean:
	rm -rf $(VENV) run .mypy_cache .ruff_cache .pytest_cache
