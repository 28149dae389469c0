#!/bin/bash
# `make install` / `make uninstall` (see the Makefile for the variables).
#
# install: a venv under $PREFIX/venv with the package, the unit, example goals (never
# overwriting a file), the polkit rule generated from the goals, the system user.
# uninstall: removes the venv, the unit, the rule and the user (if install created it); keeps
# the journal (/var/lib/setpoint) and the goals ($SYSCONFDIR/setpoint).
#
# With DESTDIR set everything goes under that directory (staging, tests) and the host is not
# touched: no user is created or removed and systemctl is not called. A venv is not
# relocatable, so a staged venv only runs from where it was built.
set -euo pipefail
umask 022

action=${1:?usage: install.sh install|uninstall}
src=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/setpoint}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
POLKITDIR=${POLKITDIR:-/etc/polkit-1/rules.d}
PYTHON=${PYTHON:-/usr/bin/python3}
SETPOINT_USER=${SETPOINT_USER:-setpoint}

case $PREFIX in /*) ;; *) echo "PREFIX must be an absolute path, not '$PREFIX'" >&2; exit 2 ;; esac
[ "$PREFIX" != / ] || { echo "PREFIX must not be /" >&2; exit 2; }

venv=$DESTDIR$PREFIX/venv
goals=$DESTDIR$SYSCONFDIR/setpoint/goals.d
unit=$DESTDIR$UNITDIR/setpoint.service
rule=$DESTDIR$POLKITDIR/50-setpoint.rules
marker=$DESTDIR$PREFIX/.created-user

live() { [ -z "$DESTDIR" ]; }
systemd_running() { live && [ -d /run/systemd/system ]; }

if live && [ "$(id -u)" != 0 ]; then
  echo "make $action needs root (or DESTDIR=... to stage into a directory)" >&2
  exit 1
fi

do_install() {
  echo "venv: $venv"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  cp -r "$src/pyproject.toml" "$src/README.md" "$src/agent" "$build/"  # no build/ in the tree
  # Exactly the versions the tests passed with (the lock, with hashes), then the package itself.
  # PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR in the environment installs from a wheelhouse, offline.
  pip=("$venv/bin/pip" --quiet --disable-pip-version-check)
  "${pip[@]}" install --require-hashes -r "$src/requirements/build.txt" \
    -r "$src/requirements/runtime.txt"
  "${pip[@]}" install --no-deps --no-build-isolation --force-reinstall "$build"

  echo "unit: $unit"
  install -d "$(dirname "$unit")"
  sed -e "s|/opt/setpoint/venv/|$PREFIX/venv/|" \
      -e "s|/etc/setpoint/goals.d|$SYSCONFDIR/setpoint/goals.d|" \
      -e "s|^User=setpoint$|User=$SETPOINT_USER|" -e "s|^Group=setpoint$|Group=$SETPOINT_USER|" \
      "$src/systemd/setpoint.service" > "$unit.tmp"
  chmod 0644 "$unit.tmp"
  mv "$unit.tmp" "$unit"

  echo "goals: $goals (examples as *.yaml.example; existing files are kept)"
  install -d -m 0755 "$goals"
  for example in "$src"/config/*.yaml; do
    dest=$goals/$(basename "$example").example
    [ -e "$dest" ] || install -m 0644 "$example" "$dest"
  done

  if live && ! getent passwd "$SETPOINT_USER" >/dev/null; then
    echo "user: $SETPOINT_USER (system user)"
    useradd --system --user-group --home-dir /var/lib/setpoint --no-create-home \
      --shell /usr/sbin/nologin --comment "Setpoint agent" "$SETPOINT_USER"
    touch "$marker"
  fi

  echo "polkit rule: $rule"
  [ -d "$DESTDIR$POLKITDIR" ] || install -d -m 0755 "$DESTDIR$POLKITDIR"
  "$venv/bin/setpoint" polkit-rule --goals "$goals" --user "$SETPOINT_USER" -o "$rule.tmp"
  sed -i "s|from $DESTDIR/|from /|" "$rule.tmp"
  chmod 0644 "$rule.tmp"
  mv "$rule.tmp" "$rule"

  if systemd_running; then
    systemctl daemon-reload
    echo "installed. Edit $goals/*.yaml, run \`$PREFIX/venv/bin/setpoint polkit-rule" \
      "--goals $goals -o $rule\` after changing units, then: systemctl enable --now setpoint"
  fi
}

do_uninstall() {
  if systemd_running && [ -e "$unit" ]; then
    systemctl disable --now setpoint.service || true
  fi
  rm -f "$unit" "$rule"
  if live && [ -e "$marker" ] && getent passwd "$SETPOINT_USER" >/dev/null; then
    userdel "$SETPOINT_USER"
  fi
  rm -f "$marker"
  rm -rf -- "$venv"
  rmdir "$DESTDIR$PREFIX" 2>/dev/null || true
  if systemd_running; then systemctl daemon-reload; fi
  echo "uninstalled; kept the journal (/var/lib/setpoint) and the goals ($SYSCONFDIR/setpoint)"
}

case $action in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) echo "usage: install.sh install|uninstall" >&2; exit 2 ;;
esac
