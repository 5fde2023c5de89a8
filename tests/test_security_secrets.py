"""Issue 7 item 6: secrets never in clear, wherever they slipped in.

Reproductions (as run against main before the fix): `--opt base_url=http://admin:SECRET@…` was shown
by `add`, `list`, `list --json`, in `test`'s error, and stored in `ifbus:result:*`; `--auth
passphrase=…`, `pin=…`, `mypass=…` were shown in clear. One list of secret words (bus.secrets) now
serves masking and log redaction alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from bus.errors import Outcome
from bus.logging import configure, get_logger
from bus.models import JobResult
from bus.secrets import is_secret_key, mask_userinfo, redact, redact_text
from bus.server import ServerEntry
from producer.cli import cli

SECRET = "Sup3rSecretValue"
SID = "AC" + "0" * 32


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write_registry(home: Path, entries: dict) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "sip_servers.json").write_text(json.dumps(entries))


def test_url_credentials_are_refused_at_add(ifbus_env: Path) -> None:
    result = run("add", "sip", "tw", "--type", "twilio", "--auth", "account_sid=AC1", "auth_token=t",
                 "--opt", f"base_url=http://admin:{SECRET}@127.0.0.1:9")  # fmt: skip
    assert result.exit_code == 2
    assert "give them with --auth" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("key", ["passphrase", "pin", "mypass", "esl_password", "sip_pin", "private_key"])
def test_every_secret_looking_auth_key_is_masked_by_add_and_list(key: str) -> None:
    added = run("add", "sip", "k", "--type", "kamailio", "--auth", "token=t0ken-value-123", f"{key}={SECRET}",
                "--json")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    listed = run("list", "sip")
    listed_json = run("list", "sip", "--json")
    for output in (added.stdout, listed.stdout, listed_json.stdout):
        assert SECRET not in output and "t0ken-value-123" not in output
    assert json.loads(listed_json.stdout)["servers"][0]["auth"][key].startswith("****")


def test_a_stored_url_with_userinfo_is_masked_in_list_and_results(ifbus_env: Path) -> None:
    """An entry written by hand (or by an older version) still never shows its URL password."""
    write_registry(ifbus_env, {"tw": {"type": "twilio", "auth": {"account_sid": SID, "auth_token": "tok"},
                                      "options": {"base_url": f"http://admin:{SECRET}@127.0.0.1:9"}}})  # fmt: skip
    for args in (("list", "sip"), ("list", "sip", "--json")):
        result = run(*args)
        assert result.exit_code == 0, result.stderr
        assert SECRET not in result.stdout and "admin:****@127.0.0.1:9" in result.stdout
    tested = run("test", "sip", "tw", "--json", "--timeout", "10")
    assert tested.exit_code != 0
    assert "base_url" in json.loads(tested.stdout)["message"]  # the adapter quoted the URL: masked on the way out
    assert SECRET not in tested.stdout + tested.stderr


def test_results_are_masked_before_they_reach_redis_or_a_screen() -> None:
    result = JobResult(
        request_id="abcdefgh", op="test", server="tw", outcome=Outcome.UNREACHABLE, exit_code=4,
        message=f"cannot connect to http://admin:{SECRET}@127.0.0.1:9/2010-04-01",
        errors={"tw": f"Authorization: Bearer {SECRET}"},
        data={"url": f"https://{SECRET}@api.example.com", "nested": [f"passphrase={SECRET}"]},
    )  # fmt: skip
    dumped = json.dumps(result.model_dump(mode="json"))
    assert SECRET not in dumped
    assert "http://admin:****@127.0.0.1:9/2010-04-01" in dumped


def test_one_word_list_for_masking_and_logs(capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("passphrase", "pin", "mypass", "auth_token", "api_secret", "Authorization", "cookie"):
        assert is_secret_key(key), key
    for key in ("api_key", "account_sid", "realm", "domain", "user", "ping_interval", "sip_port"):
        assert not is_secret_key(key), key
    configure("INFO")
    get_logger("t").info("job.done", auth={"passphrase": SECRET, "pin": SECRET}, url=f"https://u:{SECRET}@h/")
    logging.getLogger("rq.worker").info(f"connecting to https://{SECRET}@h/ with pin={SECRET}")
    err = capsys.readouterr().err
    assert SECRET not in err and err.count("****") >= 4


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"redis://:{SECRET}@h:6379/0", "redis://:****@h:6379/0"),
        (f"https://{SECRET}@h/RPC", "https://****@h/RPC"),  # a token as the user name
        (f"see http://a:{SECRET}@h/x and ftp://b:{SECRET}@g/y", "see http://a:****@h/x and ftp://b:****@g/y"),
        (f"http://{SECRET}:@h/", "http://****@h/"),  # a secret as the user name, empty password
    ],
)
def test_url_userinfo_is_masked_whole(text: str, shown: str) -> None:
    assert mask_userinfo(text) == shown == redact_text(text)


def test_masking_keeps_the_hints_messages_give() -> None:
    text = "check credentials: --auth token=… realm=…; skipping: retry"
    assert redact_text(text) == text


def test_list_json_options_hide_secret_named_options() -> None:
    entry = ServerEntry.build("kamailio", {"token": "t"}, options={"api_token_hint": SECRET})
    assert SECRET not in json.dumps(entry.public_view("k"))


def test_a_registry_entry_handed_to_the_log_is_masked_not_broken() -> None:
    """ServerEntry is a NamedTuple (bus/server.py: no dataclasses on `list`'s start-up): redaction
    rebuilds it field by field, with its secret-named auth values masked."""
    entry = ServerEntry("kamailio", {"token": SECRET, "realm": "sip.local"}, "10.0.0.5", options={"path": "/RPC"})
    shown = redact({"entry": entry, "pair": ("a", SECRET)})
    assert shown["entry"] == entry._replace(auth={"token": "****", "realm": "sip.local"})
    assert isinstance(shown["entry"], ServerEntry) and shown["pair"] == ("a", SECRET)
