"""The installed `ifbus` and `if` scripts, run as a user runs them (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import BIN


def sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_if_bus_and_ifbus_are_the_same_program(ifbus_env: Path) -> None:
    added = sh(
        str(BIN / "if"), "bus", "add", "sip", "mykam", "--type", "kamailio", "--auth", "token=xyz789", "realm=sip.local"
    )
    assert added.returncode == 0, added.stderr
    via_if = sh(str(BIN / "if"), "bus", "list", "sip", "--json")
    via_ifbus = sh(str(BIN / "ifbus"), "list", "sip", "--json")
    assert via_if.returncode == via_ifbus.returncode == 0
    assert json.loads(via_if.stdout) == json.loads(via_ifbus.stdout)
    assert json.loads(via_if.stdout)["servers"][0]["name"] == "mykam"


def test_if_without_bus_is_a_usage_error() -> None:
    result = sh(str(BIN / "if"), "list", "sip")
    assert result.returncode == 2
    assert "usage: if bus" in result.stderr


def test_errors_go_to_stderr_without_traceback() -> None:
    result = sh(str(BIN / "ifbus"), "call", "sip", "ghost", "from=1", "to=2")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "Not found: ghost"


def test_non_utf8_argv_is_refused_cleanly(ifbus_env: Path) -> None:
    result = subprocess.run(
        [os.fsencode(BIN / "ifbus"), b"add", b"sip", b"k", b"--type", b"kamailio", b"--auth", b"token=\xff\xfe"],
        capture_output=True,
        timeout=60,
        env=os.environ,
    )
    assert result.returncode == 2
    assert b"not valid UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr
    assert not (ifbus_env / "sip_servers.json").exists()
