#!/usr/bin/env sh
# Run the whole test suite, provisioning what it needs on a fresh Debian/Ubuntu machine:
# redis-server (private instances on free ports), kamailio and sip-tester (SIPp) for the
# loopback lab, and the package with its test tools in ./.venv. Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=""
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$missing redis-server"
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || missing="$missing kamailio"
command -v sipp >/dev/null 2>&1 || [ -x /usr/bin/sipp ] || missing="$missing sip-tester"
if [ -n "$missing" ]; then
  echo "provisioning from the OS packages:$missing" >&2
  as_root apt-get update -qq
  # policy-rc.d-less containers may try to start the packaged services; they are not used.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

deploy/install.sh --test
# The Node producer example (docs/producers.md) runs where npm exists; elsewhere its test says why it skips.
if command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix tests/node >/dev/null 2>&1 || echo "npm install failed: the Node producer test will skip" >&2
fi
export PATH="$PATH:/usr/sbin:/sbin"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
