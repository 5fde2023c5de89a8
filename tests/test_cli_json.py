"""`--json`: every command, every failure class, exactly one JSON object on stdout (exit code inside).

click's own usage errors (`--port 99999`, `--until whenever`, `list sips`) are raised while parsing,
before a command runs: they are the cases a script most needs in JSON and the ones a per-command
handler cannot print. Messages still go to stderr for people.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import cli
from tests.conftest import BIN

KAM = ["add", "sip", "mykam", "--type", "kamailio", "--auth", "token=xyz789", "realm=127.0.0.1", "--port"]


def one_object(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture
def registered() -> int:
    """`mykam` pointing at a closed loopback port: every operation on it is "unreachable"."""
    port = closed_port()
    result = CliRunner().invoke(cli, [*KAM, str(port), "--opt", "attempts=1", f"sip_port={port}"])
    assert result.exit_code == 0, result.stderr
    return port


CASES = [
    # (label, argv, exit code, outcome)
    ("usage: port out of range", ["add", "sip", "k", "--type", "kamailio", "--port", "99999"], 2, "invalid"),
    ("usage: --until whenever", ["call", "sip", "mykam", "from=1", "to=2", "--until", "whenever"], 2, "invalid"),
    ("usage: list sips", ["list", "sips"], 2, "invalid"),
    ("usage: no such command", ["lsit", "sip"], 2, "invalid"),
    ("usage: missing name", ["test", "sip"], 2, "invalid"),
    ("usage: no such option", ["remove", "sip", "mykam", "--force"], 2, "invalid"),
    ("usage: --auth without pairs", ["add", "sip", "k", "--type", "kamailio", "--auth"], 2, "invalid"),
    ("usage: timeout not a number", ["test", "sip", "mykam", "--timeout", "soon"], 2, "invalid"),
    ("usage: calls without sip", ["calls", "h323", "mykam"], 2, "invalid"),
    ("invalid: bad name", ["add", "sip", "../x", "--type", "kamailio", "--auth", "token=a"], 2, "invalid"),
    ("invalid: unknown type", ["add", "sip", "x", "--type", "skype"], 2, "invalid"),
    ("invalid: exists", [*KAM[:-1], "--port", "5060"], 2, "invalid"),
    ("invalid: missing to", ["call", "sip", "mykam", "from=1001"], 2, "invalid"),
    ("invalid: missing call_id", ["hangup", "sip", "mykam"], 2, "invalid"),
    ("invalid: job id", ["job", "../x"], 2, "invalid"),
    ("not found: test", ["test", "sip", "ghost"], 1, "not_found"),
    ("not found: call", ["call", "sip", "ghost", "from=1", "to=2"], 1, "not_found"),
    ("not found: hangup", ["hangup", "sip", "ghost", "call_id=abc"], 1, "not_found"),
    ("not found: remove", ["remove", "sip", "ghost"], 1, "not_found"),
    ("not found: calls", ["calls", "sip", "ghost"], 1, "not_found"),
    ("unreachable: test", ["test", "sip", "mykam", "--timeout", "5"], 4, "unreachable"),
    ("unreachable: call", ["call", "sip", "mykam", "from=1001", "to=2000", "--timeout", "5"], 4, "unreachable"),
    ("unreachable: hangup", ["hangup", "sip", "mykam", "call_id=abc", "--timeout", "5"], 4, "unreachable"),
]


@pytest.mark.parametrize(("label", "argv", "code", "outcome"), CASES, ids=[c[0] for c in CASES])
def test_failure_is_one_json_object(registered: int, label: str, argv: list[str], code: int, outcome: str) -> None:
    result = CliRunner().invoke(cli, [*argv, "--json"])
    assert result.exit_code == code, (label, result.stdout, result.stderr)
    obj = one_object(result.stdout)
    assert (obj["ok"], obj["exit_code"], obj["outcome"]) == (False, code, outcome), obj
    assert obj["message"]
    assert result.stderr.strip(), "people still get the message on stderr"
    assert "Traceback" not in result.stdout + result.stderr


SUCCESSES = [
    ["list", "sip"],
    ["schema"],
    ["add", "sip", "other", "--type", "twilio", "--auth", "account_sid=AC1", "auth_token=secret-token"],
    ["remove", "sip", "mykam"],
    ["calls", "sip", "mykam"],
]


@pytest.mark.parametrize("argv", SUCCESSES, ids=[" ".join(a[:2]) for a in SUCCESSES])
def test_success_is_one_json_object_with_exit_code_0(registered: int, argv: list[str]) -> None:
    result = CliRunner().invoke(cli, [*argv, "--json"])
    assert result.exit_code == 0, result.stderr
    obj = one_object(result.stdout)
    assert (obj["ok"], obj["exit_code"]) == (True, 0)
    assert "secret-token" not in result.stdout


def test_schema_json_carries_both_schemas() -> None:
    obj = one_object(CliRunner().invoke(cli, ["schema", "--json"]).stdout)
    assert set(obj["schemas"]) == {"request", "result"}


def test_calls_in_embedded_mode_says_why_it_lists_nothing(registered: int) -> None:
    obj = one_object(CliRunner().invoke(cli, ["calls", "sip", "mykam", "--json"]).stdout)
    assert obj["calls"] == [] and "embedded mode" in obj["note"]


def test_queue_mode_redis_down_is_one_object(registered: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IFBUS_MODE", "queue")
    monkeypatch.setenv("IFBUS_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    for argv in (["test", "sip", "mykam"], ["calls", "sip", "mykam"], ["job", "0123456789abcdef"], ["worker"]):
        result = CliRunner().invoke(cli, [*argv, "--json"])
        assert result.exit_code == 4, (argv, result.stdout, result.stderr)
        assert one_object(result.stdout)["outcome"] == "unreachable"


def test_bad_environment_is_one_object(registered: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IFBUS_MODE", "sometimes")
    result = CliRunner().invoke(cli, ["test", "sip", "mykam", "--json"])
    assert result.exit_code == 2
    assert one_object(result.stdout)["outcome"] == "invalid"


def test_without_json_stdout_stays_empty_on_usage_errors() -> None:
    result = CliRunner().invoke(cli, ["list", "sips"])
    assert result.exit_code == 2 and result.stdout == "" and "expected `sip`" in result.stderr


def test_installed_script_and_if_bus(ifbus_env: Path) -> None:
    """The real entry points, as a shell runs them (not CliRunner)."""
    env = {**os.environ, "IFBUS_HOME": str(ifbus_env)}
    for argv in ([str(BIN / "ifbus"), "add", "sip", "k", "--port", "99999", "--json"],
                 [str(BIN / "if"), "bus", "list", "sips", "--json"],
                 [str(BIN / "if"), "list", "sip", "--json"]):  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert one_object(done.stdout)["exit_code"] == 2
