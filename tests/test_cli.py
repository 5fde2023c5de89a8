"""The CLI in-process (click's CliRunner): the spec's lines verbatim, output shapes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import cli

# The spec's example lines, one per server type, exactly as a user types them (after `if bus`).
SPEC_ADDS = [
    "add sip myast --type asterisk --auth user=admin secret=pass123",
    "add sip myfs --type freeswitch --auth apikey=ABC123 domain=fs.local",
    "add sip mykam --type kamailio --auth token=xyz789 realm=sip.local",
    "add sip myopensips --type opensips --auth user=admin secret=pass domain=opensips.local",
    "add sip mytwilio --type twilio --auth account_sid=AC123 auth_token=xyz789",
    "add sip myvonage --type vonage --auth api_key=key123 api_secret=secret456",
    "add sip myfusion --type fusionpbx --auth username=admin password=pass123 domain=fusion.local",
]
SECRETS = ["pass123", "ABC123", "xyz789", "secret456"]


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def registry_bytes(home: Path) -> bytes | None:
    path = home / "sip_servers.json"
    return path.read_bytes() if path.exists() else None


def test_spec_lines_add_list_remove_for_all_seven_types(ifbus_env: Path) -> None:
    for line in SPEC_ADDS:
        result = run(*line.split())
        assert result.exit_code == 0, (line, result.output, result.stderr)
    listing = run("list", "sip")
    assert listing.exit_code == 0
    for name in ("myast", "myfs", "mykam", "myopensips", "mytwilio", "myvonage", "myfusion"):
        assert name in listing.stdout
    for secret in SECRETS:
        assert secret not in listing.stdout, secret
    for name in ("myast", "myfs", "mykam", "myopensips", "mytwilio", "myvonage", "myfusion"):
        assert run("remove", "sip", name).exit_code == 0
    assert json.loads(registry_bytes(ifbus_env)) == {}


def test_list_json_masks_secrets_and_shows_effective_options() -> None:
    run(*SPEC_ADDS[2].split())
    result = run("list", "sip", "--json")
    data = json.loads(result.stdout)
    server = data["servers"][0]
    assert server["auth"] == {"token": "****", "realm": "sip.local"}
    assert server["options"]["path"] == "/RPC"
    assert server["host"] == "sip.local"
    assert "xyz789" not in result.stdout


def test_type_may_be_positional_and_quoted_auth_is_split() -> None:
    result = run("add", "sip", "k2", "kamailio", "--auth", "token=abc realm=r.local", "--opt", "path=/jsonrpc")
    assert result.exit_code == 0, result.stderr
    server = json.loads(run("list", "sip", "--json").stdout)["servers"][0]
    assert server["auth"]["realm"] == "r.local"
    assert server["options"]["path"] == "/jsonrpc"


def test_readd_refused_unless_replace(ifbus_env: Path) -> None:
    run(*SPEC_ADDS[2].split())
    before = registry_bytes(ifbus_env)
    again = run(*SPEC_ADDS[2].split())
    assert again.exit_code == 2 and "--replace" in again.stderr
    assert registry_bytes(ifbus_env) == before
    assert run(*SPEC_ADDS[2].split(), "--replace").exit_code == 0


def test_not_found_exit_1() -> None:
    for args in (["test", "sip", "ghost"], ["remove", "sip", "ghost"], ["call", "sip", "ghost", "from=1", "to=2"]):
        result = run(*args)
        assert result.exit_code == 1, args
        assert "Not found: ghost" in result.stderr


def test_unknown_type_lists_valid_ones() -> None:
    result = run("add", "sip", "x", "--type", "skype")
    assert result.exit_code == 2
    assert "asterisk, freeswitch, kamailio, opensips, twilio, vonage, fusionpbx" in result.stderr


def test_json_errors_are_one_object_on_stdout() -> None:
    result = run("remove", "sip", "ghost", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "ok": False,
        "outcome": "not_found",
        "exit_code": 1,
        "message": "Not found: ghost",
    }


def test_each_command_help_shows_a_real_example() -> None:
    for command in ("add", "test", "call", "hangup", "list", "remove", "worker", "job"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "ifbus " + command in result.stdout, command


def test_schema_prints_request_and_result_json_schema() -> None:
    data = json.loads(run("schema").stdout)
    assert set(data) == {"request", "result"}
    ops = {m["properties"]["op"]["const"] for m in data["request"]["$defs"].values() if "op" in m.get("properties", {})}
    assert ops == {"test", "call", "hangup"}
    assert "from" in data["request"]["$defs"]["CallRequest"]["properties"]  # the wire name, not from_


HUGE = "x" * 5000
BAD_INPUTS = [
    ("empty auth value", ["add", "sip", "k", "--type", "kamailio", "--auth", "token="]),
    ("huge auth value", ["add", "sip", "k", "--type", "kamailio", "--auth", "token=" + HUGE]),
    ("CR/LF in auth", ["add", "sip", "k", "--type", "kamailio", "--auth", "token=a\r\nAction: Originate"]),
    ("non-UTF-8 value", ["add", "sip", "k", "--type", "kamailio", "--auth", "token=\udcff\udcfe"]),
    ("malformed pair", ["add", "sip", "k", "--type", "kamailio", "--auth", "token"]),
    ("auth key with a space", ["add", "sip", "k", "--type", "kamailio", "--auth", "to ken=x"]),
    ("repeated key", ["add", "sip", "k", "--type", "kamailio", "--auth", "token=a", "token=b"]),
    ("name with slash", ["add", "sip", "../etc", "--type", "kamailio"]),
    ("name with space", ["add", "sip", "my kam", "--type", "kamailio"]),
    ("unicode name", ["add", "sip", "kämailio", "--type", "kamailio"]),
    ("huge name", ["add", "sip", "k" * 300, "--type", "kamailio"]),
    # no type = detect (tests/integration/test_sip_probe_lab.py); a bad probe port is refused before probing
    ("auto type, bad sip_port", ["add", "sip", "k", "--auth", "token=a", "--opt", "sip_port=99999"]),
    ("auto type, bad ami_port", ["add", "sip", "k", "--type", "auto", "--opt", "ami_port=x"]),
    ("two types", ["add", "sip", "k", "kamailio", "--type", "asterisk"]),
    ("wrong kind", ["add", "h323", "k", "--type", "kamailio"]),
    ("port not a number", ["add", "sip", "k", "--type", "kamailio", "--port", "abc"]),
    ("port out of range", ["add", "sip", "k", "--type", "kamailio", "--port", "70000"]),
    ("host with slash", ["add", "sip", "k", "--type", "kamailio", "--host", "a/b"]),
    ("missing to", ["call", "sip", "mykam", "from=1001"]),
    ("missing from and to", ["call", "sip", "mykam"]),
    ("CR/LF in to", ["call", "sip", "mykam", "from=1001", "to=2000\r\nBYE"]),
    ("empty from", ["call", "sip", "mykam", "from=", "to=2000"]),
    ("huge to", ["call", "sip", "mykam", "from=1001", "to=" + HUGE]),
    ("unknown call key", ["call", "sip", "mykam", "from=1001", "to=2000", "colour=red"]),
    ("bare word in call", ["call", "sip", "mykam", "from=1001", "to=2000", "please"]),
    ("missing call_id", ["hangup", "sip", "mykam"]),
    ("NUL in call_id", ["hangup", "sip", "mykam", "call_id=a\x00b"]),
    ("timeout not a number", ["test", "sip", "mykam", "--timeout", "soon"]),
    ("bad request id", ["test", "sip", "mykam", "--request-id", "../../x"]),
]


@pytest.mark.parametrize(("label", "args"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_clear_error_no_traceback_registry_unchanged(ifbus_env: Path, label: str, args: list[str]) -> None:
    run(*SPEC_ADDS[2].split())
    before = registry_bytes(ifbus_env)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (label, result.exit_code, result.output, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output + result.stderr
    assert result.stderr.strip(), "a clear message is expected"
    assert registry_bytes(ifbus_env) == before


def test_corrupt_registry_clear_error_and_untouched(ifbus_env: Path) -> None:
    ifbus_env.mkdir(parents=True)
    (ifbus_env / "sip_servers.json").write_bytes(b'{"mykam": ')
    for args in (["list", "sip"], SPEC_ADDS[0].split(), ["remove", "sip", "mykam"], ["test", "sip", "mykam"]):
        result = run(*args)
        assert result.exit_code == 2, args
        assert "corrupt" in result.stderr and "left untouched" in result.stderr
    assert (ifbus_env / "sip_servers.json").read_bytes() == b'{"mykam": '


def test_every_catalogue_type_has_an_adapter_of_that_type() -> None:
    from bus.vendors import TYPES
    from workers.adapters import adapter_class

    assert {t: adapter_class(t).type for t in TYPES} == {t: t for t in TYPES}
