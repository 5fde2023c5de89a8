"""Issue 7 item 7: loose input is refused with a clear error (exit 2), never accepted or a traceback.

Reproductions (as run against main before the fix): `--opt connect_timeout=abc|nan|-1|inf` accepted;
registry entries with `"auth": []`, unknown fields or duplicate JSON keys accepted silently; a deeply
nested registry file gave "internal error (RecursionError)"; a dangling symlink as the lock file was
followed; `add` of kamailio with no token succeeded (and joined the failover pool).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bus.errors import InvalidInput, RegistryError
from bus.registry import LOCK_NAME, FileRegistry
from bus.server import ServerEntry
from producer.cli import cli

KAM = ["--type", "kamailio", "--auth", "token=t"]


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ---------------------------------------------------------------- numeric options


@pytest.mark.parametrize(
    "opt",
    ["connect_timeout=abc", "connect_timeout=nan", "connect_timeout=-1", "connect_timeout=inf", "connect_timeout=0",
     "read_timeout=1e400", "attempts=0", "attempts=1.5", "attempts=NaN", "breaker_threshold=-3",
     "breaker_cooldown=infinity", "sip_port=0", "sip_port=70000", "sip_port=50.5", "fr_timer=", "sip_timeout=1e9",
     "esl_port=x"],
)  # fmt: skip
def test_bad_numeric_options_are_refused(opt: str) -> None:
    result = run("add", "sip", "k", *KAM, "--opt", opt)
    assert result.exit_code == 2, result.stdout
    assert "internal error" not in result.stderr
    assert opt.split("=")[0] in result.stderr
    assert run("list", "sip", "--json").stdout.count('"name"') == 0  # nothing was stored


@pytest.mark.parametrize("opt", ["connect_timeout=0.5", "attempts=5", "sip_port=5080", "read_timeout=30"])
def test_good_numeric_options_are_kept(opt: str) -> None:
    assert run("add", "sip", "k", *KAM, "--opt", opt).exit_code == 0


# ---------------------------------------------------------------- the registry file


def registry_with(tmp_path: Path, text: str) -> FileRegistry:
    registry = FileRegistry(tmp_path)
    registry.path.write_text(text)
    return registry


GOOD = '"type": "kamailio", "auth": {"token": "t"}'


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"k": {"type": "kamailio", "auth": []}}', "'auth' must be an object"),
        ('{"k": {"type": "kamailio", "auth": {"token": 5}}}', "auth.token must be a string"),
        ('{"k": {"type": "kamailio", "options": "fast"}}', "'options' must be an object"),
        ('{"k": {' + GOOD + ', "colour": "red"}}', "unknown field 'colour'"),
        ('{"k": {' + GOOD + ', "host": 127}}', "'host' must be a string"),
        ('{"k": {"type": "kamailio", "auth": {"token": "a", "token": "b"}}}', "key 'token' appears twice"),
        ('{"k": {' + GOOD + ', "type": "asterisk"}}', "key 'type' appears twice"),
        ('{"k": {' + GOOD + '}, "k": {' + GOOD + "}}", "entry 'k' appears twice"),
        ('{"k": {' + GOOD + ', "options": {"connect_timeout": "nan"}}}', "connect_timeout"),
    ],
)
def test_bad_entries_are_refused_with_the_entry_named(tmp_path: Path, text: str, why: str) -> None:
    registry = registry_with(tmp_path, text)
    with pytest.raises(RegistryError, match=re.escape(why)) as caught:
        registry.entries()
    assert "'k'" in caught.value.message
    with pytest.raises(RegistryError):
        registry.add("other", ServerEntry.build("kamailio", {"token": "t"}))
    assert registry.path.read_text() == text  # never rewritten


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_registry_is_a_clear_error(tmp_path: Path, depth: int, ifbus_env: Path) -> None:
    text = '{"k": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(RegistryError, match="nested too deeply"):
        registry_with(tmp_path, text).entries()
    ifbus_env.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ifbus_env / "sip_servers.json").write_text(text)
    result = run("list", "sip")
    assert result.exit_code != 0 and "nested too deeply" in result.stderr
    assert "internal error" not in result.stderr and "RecursionError" not in result.stderr


def test_deep_nesting_inside_an_entry_is_refused_without_recursion(tmp_path: Path) -> None:
    text = '{"k": {' + GOOD + ', "options": {"a": ' + "[" * 900 + "]" * 900 + "}}}"
    with pytest.raises(RegistryError, match=r"entry 'k': options\.a must be a string"):
        registry_with(tmp_path, text).entries()


@pytest.mark.parametrize("target", ["elsewhere/victim", "missing-folder/victim"])
def test_a_symlinked_lock_file_is_refused(tmp_path: Path, target: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    victim = tmp_path / target
    if target.startswith("elsewhere"):
        victim.parent.mkdir()
    os.symlink(victim, home / LOCK_NAME)  # dangling: following it would create the victim file
    registry = FileRegistry(home)
    with pytest.raises(RegistryError, match="symbolic link"):
        registry.add("k", ServerEntry.build("kamailio", {"token": "t"}))
    assert not victim.exists()
    assert not registry.path.exists()


def test_the_cli_says_so_for_a_symlinked_lock(ifbus_env: Path, tmp_path: Path) -> None:
    ifbus_env.mkdir(mode=0o700, parents=True)
    os.symlink(tmp_path / "victim", ifbus_env / LOCK_NAME)
    result = run("add", "sip", "k", *KAM)
    assert result.exit_code != 0 and "symbolic link" in result.stderr
    assert not (tmp_path / "victim").exists()


# ---------------------------------------------------------------- required credentials


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["--type", "kamailio", "--auth", "realm=sip.local"], "token=…"),
        (["--type", "kamailio"], "token=…"),
        (["--type", "asterisk", "--auth", "user=admin"], "user=… secret=…"),
        (["--type", "twilio", "--auth", "account_sid=AC1"], "account_sid=… auth_token=…"),
        (["--type", "vonage", "--auth", "api_key=k"], "api_key=… api_secret=… or application_id=… private_key=…"),
        (["--type", "freeswitch", "--auth", "domain=fs.local"], "apikey=…"),
        (["--type", "fusionpbx", "--auth", "username=admin", "domain=f.local"], "username=… password=…"),
    ],
)
def test_add_without_the_types_credentials_is_refused(args: list[str], missing: str) -> None:
    result = run("add", "sip", "s", *args)
    assert result.exit_code == 2
    assert f"needs credentials: --auth {missing}" in result.stderr
    assert json.loads(run("list", "sip", "--json").stdout)["servers"] == []


def test_types_whose_credentials_are_optional_or_alternative() -> None:
    assert run("add", "sip", "os", "--type", "opensips", "--auth", "domain=o.local").exit_code == 0
    assert run("add", "sip", "v", "--type", "vonage", "--auth", "api_key=k", "api_secret=s").exit_code == 0


def test_an_entry_from_the_file_is_not_held_to_adds_rules(tmp_path: Path) -> None:
    """Reading keeps working for entries written before the rule (they fail at their own call)."""
    registry = registry_with(tmp_path, '{"k": {"type": "kamailio", "auth": {}}}')
    assert registry.entries()["k"].auth == {}
    with pytest.raises(InvalidInput, match="needs credentials"):
        registry.add("k2", ServerEntry.build("kamailio", {}))
