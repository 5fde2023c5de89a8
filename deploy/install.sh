#!/usr/bin/env sh
# Install IF.bus SIP into ./.venv on a Debian/Ubuntu machine with Python 3.11+.
# Usage: deploy/install.sh [--test]   (--test also installs the test tools)
# Provisions python3-venv from the OS packages when the interpreter cannot make a venv.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "IF.bus SIP needs Python 3.11 or newer; found $("$PY" --version 2>&1)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$ver-venv" || \
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$PY" -m venv .venv
  fi
fi

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".$extras"
echo "installed: $(.venv/bin/ifbus --version) in $(pwd)/.venv/bin (ifbus, if)" >&2
