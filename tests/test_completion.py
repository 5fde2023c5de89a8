"""Shell completion through click's own machinery, as the shell runs it: the installed `ifbus` with
`_IFBUS_COMPLETE=<shell>_complete` and the words typed so far (docs/cli.md has the set-up lines)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN

ADDS = [
    ["mykam", "--type", "kamailio", "--auth", "token=t", "realm=127.0.0.1"],
    ["mykam2", "--type", "kamailio", "--auth", "token=t"],
    ["myast", "--type", "asterisk", "--auth", "user=u", "secret=s"],
]


@pytest.fixture
def env(ifbus_env: Path) -> dict[str, str]:
    env = {**os.environ, "IFBUS_HOME": str(ifbus_env)}
    for words in ADDS:
        subprocess.run([str(BIN / "ifbus"), "add", "sip", *words], env=env, check=True, capture_output=True)
    return env


def bash(env: dict[str, str], line: str) -> list[str]:
    """What bash's completion function would offer for `line` (a trailing space: a new word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    done = subprocess.run(
        [str(BIN / "ifbus")],
        env={**env, "_IFBUS_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(cword)},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stderr == ""
    return [item.partition(",")[2] for item in done.stdout.splitlines() if item]


def test_partial_server_name(env: dict[str, str]) -> None:
    assert bash(env, "ifbus test sip my") == ["myast", "mykam", "mykam2"]
    assert bash(env, "ifbus call sip myk") == ["mykam", "mykam2"]
    assert bash(env, "ifbus hangup sip mya") == ["myast"]
    assert bash(env, "ifbus remove sip nothing") == []


def test_commands_kind_and_types(env: dict[str, str]) -> None:
    assert {"add", "test", "call", "hangup", "list", "remove", "calls", "demo"} <= set(bash(env, "ifbus "))
    assert bash(env, "ifbus list s") == ["sip"]
    assert bash(env, "ifbus add sip new --type f") == ["freeswitch", "fusionpbx"]


def test_opt_and_auth_keys_of_the_servers_type(env: dict[str, str]) -> None:
    opts = bash(env, "ifbus add sip new --type kamailio --opt ")
    assert "path=" in opts and "fr_inv_timer=" in opts and "context=" not in opts  # context= is Asterisk's
    assert bash(env, "ifbus add sip new --type asterisk --opt con") == ["connect_timeout=", "context="]
    assert bash(env, "ifbus add sip new --type kamailio --auth ") == ["token=", "realm="]
    assert bash(env, "ifbus call sip mykam ") == ["from=", "to="]
    assert bash(env, "ifbus call sip mykam from=1001 ") == ["to="]


def test_broken_registry_completes_nothing_quietly(env: dict[str, str], ifbus_env: Path) -> None:
    (ifbus_env / "sip_servers.json").write_text("{broken")
    assert bash(env, "ifbus test sip my") == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_script_and_names(env: dict[str, str], shell: str) -> None:
    script = subprocess.run([str(BIN / "ifbus")], env={**env, "_IFBUS_COMPLETE": f"{shell}_source"},
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "_IFBUS_COMPLETE" in script and f"{shell}_complete" in script
    extra = {"COMP_WORDS": "ifbus test sip myk", "COMP_CWORD": "3"}  # bash and zsh
    if shell == "fish":
        extra = {"COMP_WORDS": "ifbus test sip myk", "COMP_CWORD": "myk"}
    out = subprocess.run([str(BIN / "ifbus")], env={**env, "_IFBUS_COMPLETE": f"{shell}_complete", **extra},
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "mykam" in out and "mykam2" in out and "myast" not in out
