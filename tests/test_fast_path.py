"""The click-free fast path of `ifbus list sip [--json]` and `ifbus --help` (producer/entry.py) prints
the same bytes, on the same streams, with the same exit code as click does for the same line.

Each case runs whole processes: `producer.entry` (what the `ifbus` and `if` programs run) against
`producer.cli` (click alone), and each run reports whether click was imported, so a case cannot pass
by both sides quietly taking click.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from producer import helpcache

RUN = """
import json, os, sys
side, argv = sys.argv[1], json.loads(sys.argv[2])
sys.argv = ["ifbus", *argv]
try:
    if side == "entry":
        from producer.entry import main
    elif side == "if":
        from producer.entry import if_main as main
    else:
        from producer.cli import main
    main()
finally:
    with open(os.environ["PROBE_OUT"], "w") as out:
        out.write("click" if "click" in sys.modules else "light")
"""


def run(side: str, argv: list[str], env: dict[str, str], tmp_path: Path) -> tuple[int, bytes, bytes, str]:
    probe = tmp_path / "probe"
    done = subprocess.run([sys.executable, "-c", RUN, side, json.dumps(argv)], env={**env, "PROBE_OUT": str(probe)},
                          capture_output=True, timeout=60)  # fmt: skip
    return done.returncode, done.stdout, done.stderr, probe.read_text()


@pytest.fixture
def env(ifbus_env: Path, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "IFBUS_HOME": str(ifbus_env), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def add(env: dict[str, str], tmp_path: Path, *argv: str) -> None:
    code, _, err, _ = run("click", ["add", "sip", *argv], env, tmp_path)
    assert code == 0, err


def same(argv: list[str], env: dict[str, str], tmp_path: Path, fast: str = "light") -> tuple[int, bytes, bytes]:
    """Run `argv` both ways; assert the same outcome, and that the entry point took `fast`."""
    code, out, err, took = run("entry", argv, env, tmp_path)
    assert took == fast
    assert run("click", argv, env, tmp_path)[:3] == (code, out, err)
    return code, out, err


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_list_is_byte_identical_for_every_type(env: dict[str, str], tmp_path: Path, as_json: bool) -> None:
    add(env, tmp_path, "ast1", "--type", "asterisk", "--auth", "user=admin", "secret=pass123456789")
    add(env, tmp_path, "fs1", "--type", "freeswitch", "--auth", "apikey=ABC123", "domain=fs.local")
    add(env, tmp_path, "kam1", "--type", "kamailio", "--auth", "token=xyz789", "realm=sïp.exämple", "--port", "5080")
    add(env, tmp_path, "os1", "--type", "opensips", "--auth", "user=admin", "secret=pw", "domain=opensips.local",
        "--opt", "path=/mi/ünï")  # fmt: skip
    add(env, tmp_path, "tw1", "--type", "twilio", "--auth", "account_sid=AC123", "auth_token=tok")
    add(env, tmp_path, "von1", "--type", "vonage", "--auth", "api_key=key123", "api_secret=secret456")
    add(env, tmp_path, "fpbx1", "--type", "fusionpbx", "--auth", "username=admin", "password=p", "domain=f.local",
        "--pool", "pbx-pool")  # fmt: skip
    code, out, _ = same(["list", "sip", *(["--json"] if as_json else [])], env, tmp_path)
    assert code == 0 and "sïp.exämple" in out.decode() and b"pass123456789" not in out
    if as_json:
        assert len(json.loads(out)["servers"]) == 7


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_list_of_an_empty_registry(env: dict[str, str], tmp_path: Path, as_json: bool) -> None:
    code, out, _ = same(["list", "sip", *(["--json"] if as_json else [])], env, tmp_path)
    assert code == 0 and (json.loads(out)["servers"] == [] if as_json else out.startswith(b"No servers registered"))


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"kam": {"type": "nosuch"}}', b'{"kam": {"type": "kamailio"}, "kam": {"type": "kamailio"}}',
     b"\xff\xfe", b"[]"],
    ids=["not-json", "bad-type", "duplicate", "not-utf8", "not-an-object"],
)  # fmt: skip
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_list_of_a_corrupt_registry_fails_the_same_way(
    env: dict[str, str], tmp_path: Path, ifbus_env: Path, content: bytes, as_json: bool
) -> None:
    ifbus_env.mkdir(parents=True, exist_ok=True)
    (ifbus_env / "sip_servers.json").write_bytes(content)
    code, out, err = same(["list", "sip", *(["--json"] if as_json else [])], env, tmp_path)
    assert code != 0 and b"Registry" in err and b"Traceback" not in err
    assert (json.loads(out)["exit_code"] == code) if as_json else out == b""


def test_list_of_an_unreadable_registry_fails_the_same_way(env: dict[str, str], tmp_path: Path,
                                                          ifbus_env: Path) -> None:  # fmt: skip
    (ifbus_env / "sip_servers.json").mkdir(parents=True)  # a directory where the file should be
    code, _, err = same(["list", "sip"], env, tmp_path)
    assert code != 0 and b"Cannot read registry" in err


def test_if_bus_list_takes_the_fast_path(env: dict[str, str], tmp_path: Path) -> None:
    add(env, tmp_path, "kam1", "--type", "kamailio", "--auth", "token=xyz789")
    code, out, err, took = run("if", ["bus", "list", "sip", "--json"], env, tmp_path)
    assert took == "light" and (code, out, err) == run("click", ["list", "sip", "--json"], env, tmp_path)[:3]


@pytest.mark.parametrize(
    "argv", [["list", "--json", "sip"], ["list", "sips"], ["list", "sip", "extra"], ["list", "sip", "--help"]]
)
def test_other_lines_go_to_click(env: dict[str, str], tmp_path: Path, argv: list[str]) -> None:
    same(argv, env, tmp_path, fast="click")


def test_completion_goes_to_click(env: dict[str, str], tmp_path: Path) -> None:
    add(env, tmp_path, "kam1", "--type", "kamailio", "--auth", "token=xyz789")
    completing = {**env, "_IFBUS_COMPLETE": "bash_complete", "COMP_WORDS": "ifbus list sip", "COMP_CWORD": "2"}
    code, out, _, took = run("entry", ["list", "sip"], completing, tmp_path)
    assert took == "click" and code == 0 and b"sip" in out


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("columns", ["60", "120"])
def test_help_is_click_s_text_rendered_once(env: dict[str, str], tmp_path: Path, flag: str, columns: str) -> None:
    env = {**env, "COLUMNS": columns}
    first = run("entry", [flag], env, tmp_path)
    assert first[3] == "click" and first[0] == 0  # nothing cached yet: click renders, and it is kept
    second = same([flag], env, tmp_path)
    assert second == first[:3] and second[1].startswith(b"Usage: ifbus [OPTIONS] COMMAND")


def test_help_cache_follows_the_width(env: dict[str, str], tmp_path: Path) -> None:
    narrow, wide = {**env, "COLUMNS": "60"}, {**env, "COLUMNS": "100"}
    run("entry", ["--help"], narrow, tmp_path)
    assert run("entry", ["--help"], wide, tmp_path)[3] == "click"  # a new width is a new key
    assert same(["--help"], narrow, tmp_path)[1] != same(["--help"], wide, tmp_path)[1]


def test_if_bus_help_has_its_own_usage_line(env: dict[str, str], tmp_path: Path) -> None:
    run("if", ["bus", "--help"], env, tmp_path)
    code, out, err, took = run("if", ["bus", "--help"], env, tmp_path)
    assert took == "light" and code == 0 and out.startswith(b"Usage: if bus [OPTIONS]")
    click_side = subprocess.run([sys.executable, "-c", "from producer.cli import if_main; if_main()", "bus", "--help"],
                                env=env, capture_output=True, timeout=60)  # fmt: skip
    assert (code, out, err) == (click_side.returncode, click_side.stdout, click_side.stderr)


def test_help_without_a_writable_cache_still_prints(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = {**env, "XDG_CACHE_HOME": str(blocker)}
    for _ in range(2):
        code, out, err, took = run("entry", ["--help"], env, tmp_path)
        assert took == "click" and code == 0 and err == b"" and out.startswith(b"Usage: ifbus")


def test_help_cache_is_invalidated_when_the_cli_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "cli.py"
    source.write_text("one version of the CLI\n")
    monkeypatch.setattr(helpcache, "SOURCE", str(source))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert helpcache.lookup("ifbus") is None
    helpcache.remember("help of version one")
    assert helpcache.lookup("ifbus") == "help of version one"
    source.write_text("another version of the CLI\n")
    assert helpcache.lookup("ifbus") is None
    helpcache.remember("help of version two")
    assert helpcache.lookup("ifbus") == "help of version two"
    assert len(list((tmp_path / "cache" / "ifbus").iterdir())) == 1  # version one's file is gone


def test_a_file_whose_key_differs_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name holds a CRC of the key; the first line holds the key itself, and must match."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert helpcache.lookup("ifbus") is None
    helpcache.remember("the real help")
    (cached,) = (tmp_path / "cache" / "ifbus").iterdir()
    cached.write_text("some other key\nplanted text")
    assert helpcache.lookup("ifbus") is None


def test_remember_writes_only_after_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """click renders help for many reasons (`ifbus add --help`, tests through CliRunner): only the
    rendering that follows the fast path's miss is kept."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(helpcache, "_pending", None)
    helpcache.remember("not asked for")
    assert not (tmp_path / "cache").exists()


def test_list_to_an_ascii_stream_prints_what_click_would(env: dict[str, str], tmp_path: Path) -> None:
    """A stream whose encoding is ASCII is one click.echo re-wraps (UTF-8): producer.output.echo hands
    such lines to click instead of failing on the first non-ASCII value."""
    add(env, tmp_path, "kam1", "--type", "kamailio", "--auth", "token=xyz789", "realm=sïp.local")
    code, out, err = same(["list", "sip"], {**env, "PYTHONIOENCODING": "ascii"}, tmp_path, fast="click")
    assert code == 0 and "sïp.local" in out.decode("utf-8") and err == b""
