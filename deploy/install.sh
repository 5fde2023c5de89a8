#!/usr/bin/env sh
# Install IF.bus SIP into ./.venv on a Debian/Ubuntu machine with Python 3.11+.
# Usage: deploy/install.sh [--dev] [--test] [--no-demo]
#   (default) a regular install: the package is copied into .venv (fast start-up, no import hooks);
#   --dev     an editable install for working on the code (what tests/run.sh uses, with --test);
#   --test    --dev plus the test tools;
#   --no-demo skip the kamailio and sip-tester OS packages `ifbus demo` needs.
# Provisions python3-venv (and the demo's packages) from the OS packages when missing.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

dev="" extras="" demo=1
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --test) dev=1; extras="[test]" ;;
    --no-demo) demo="" ;;
    *) echo "usage: deploy/install.sh [--dev] [--test] [--no-demo]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "IF.bus SIP needs Python 3.11 or newer; found $("$PY" --version 2>&1)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python$ver-venv" || apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi

if [ -n "$demo" ]; then
  missing=""
  command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || missing="$missing kamailio"
  command -v sipp >/dev/null 2>&1 || [ -x /usr/bin/sipp ] || missing="$missing sip-tester"
  if [ -n "$missing" ]; then
    echo "installing for \`ifbus demo\` from the OS packages:$missing" >&2
    apt_install $missing || echo "could not install$missing: \`ifbus demo\` will say what is missing" >&2
  fi
fi

.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# pip's own progress and setuptools' build chatter go to a log; only a failure shows it.
log=$(mktemp)
if [ -n "$dev" ]; then
  set -- -e ".$extras"
else
  set -- ".$extras"
fi
if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
[ -n "$dev" ] || rm -rf build  # a regular install leaves no build tree behind
echo "installed: $(.venv/bin/ifbus --version) in $(pwd)/.venv/bin (ifbus, if)$([ -n "$dev" ] && echo ', editable')" >&2
