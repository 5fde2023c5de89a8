"""The fleet's registry in Redis (bus/registry_redis.py), secrets at rest (bus/vault.py) and the
`@/path` / `env:NAME` secret sources (bus/credentials.py), on a private pytest-redis instance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from redis import Redis

from bus import keys
from bus.credentials import at_use, resolve_auth
from bus.errors import InvalidInput, NotFound, RegistryError
from bus.registry import FileRegistry, open_registry
from bus.registry_redis import RedisRegistry
from bus.server import ServerEntry

IFBUS = str(Path(sys.executable).parent / "ifbus")


def kam(token: str = "tok-123456789", port: int = 5071) -> ServerEntry:
    return ServerEntry.build("kamailio", {"token": token, "realm": "sip.local"}, "127.0.0.1", port)


@pytest.fixture
def fleet(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Redis:
    monkeypatch.setenv("IFBUS_REGISTRY", "redis")
    monkeypatch.setenv("IFBUS_REDIS_URL", redis_url)
    monkeypatch.setenv("IFBUS_REGISTRY_KEY", Fernet.generate_key().decode())
    monkeypatch.setattr(RedisRegistry, "_shared", {})
    return Redis.from_url(redis_url)


def test_open_registry_picks_the_backend(fleet: Redis, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    assert isinstance(open_registry(), RedisRegistry) and open_registry() is open_registry()
    monkeypatch.setenv("IFBUS_REGISTRY", redis_url)
    assert open_registry().url == redis_url
    monkeypatch.setenv("IFBUS_REGISTRY", "file")
    assert isinstance(open_registry(), FileRegistry)
    monkeypatch.setenv("IFBUS_REGISTRY", "mysql://x")
    with pytest.raises(InvalidInput, match="IFBUS_REGISTRY"):
        open_registry()


def test_every_host_sees_an_add_and_a_change_at_its_next_read(fleet: Redis, redis_url: str) -> None:
    host_a, host_b = RedisRegistry(redis_url), RedisRegistry(redis_url)
    assert host_b.entries() == {}
    host_a.add("kam1", kam())
    assert host_b.get("kam1").auth["token"] == "tok-123456789"
    with pytest.raises(InvalidInput, match="already exists"):
        host_b.add("kam1", kam())
    host_b.add("kam1", kam(port=6000), replace=True)
    assert host_a.get("kam1").port == 6000  # the version moved: host_a's cache is not used
    assert host_a.remove("kam1").type == "kamailio"
    with pytest.raises(NotFound):
        host_b.get("kam1")
    assert int(fleet.get(keys.REGISTRY_VERSION)) == 3


def test_secrets_are_sealed_at_rest_and_open_only_with_the_key(fleet: Redis, redis_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    RedisRegistry(redis_url).add("kam1", kam("very-secret-token"))
    stored = json.loads(fleet.hget(keys.REGISTRY, "kam1"))
    assert stored["auth"]["token"].startswith("enc:") and b"very-secret-token" not in b"".join(
        fleet.hvals(keys.REGISTRY))
    assert stored["auth"]["realm"] == "sip.local"  # not a secret: readable by operators
    assert RedisRegistry(redis_url).get("kam1").auth["token"] == "very-secret-token"
    monkeypatch.setenv("IFBUS_REGISTRY_KEY", Fernet.generate_key().decode())  # a host with another key
    other = RedisRegistry(redis_url).get("kam1")
    assert other.auth["token"] != "very-secret-token" and other.type == "kamailio"  # listed, never opened
    monkeypatch.delenv("IFBUS_REGISTRY_KEY")
    with pytest.raises(InvalidInput, match="keeps no secret in clear") as caught:
        RedisRegistry(redis_url).add("kam2", kam("another-token"))
    assert "another-token" not in caught.value.message and fleet.hget(keys.REGISTRY, "kam2") is None


def test_a_key_file_and_key_rotation(fleet: Redis, redis_url: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    (tmp_path / "key").write_text(old + "\n")
    monkeypatch.delenv("IFBUS_REGISTRY_KEY")
    monkeypatch.setenv("IFBUS_REGISTRY_KEY_FILE", str(tmp_path / "key"))
    RedisRegistry(redis_url).add("kam1", kam("rotated-token-1"))
    monkeypatch.setenv("IFBUS_REGISTRY_KEY", f"{new},{old}")  # new seals, both open
    assert RedisRegistry(redis_url).get("kam1").auth["token"] == "rotated-token-1"
    monkeypatch.setenv("IFBUS_REGISTRY_KEY", "not-a-key")
    with pytest.raises(InvalidInput, match="not a Fernet key"):
        RedisRegistry(redis_url).add("kam2", kam())


def test_env_references_are_stored_as_given_and_resolved_at_use(fleet: Redis, redis_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("IFBUS_REGISTRY_KEY")  # no key needed: no secret is stored
    RedisRegistry(redis_url).add("kam1", kam("env:KAM_TOKEN"))
    assert json.loads(fleet.hget(keys.REGISTRY, "kam1"))["auth"]["token"] == "env:KAM_TOKEN"
    assert RedisRegistry(redis_url).get("kam1").auth["token"] == "env:KAM_TOKEN"  # unset here: left as is
    monkeypatch.setenv("KAM_TOKEN", "from-the-environment")
    assert RedisRegistry(redis_url).get("kam1").auth["token"] == "from-the-environment"
    monkeypatch.setenv("KAM_TOKEN", "line\r\nInjected: yes")  # never reaches a protocol
    assert at_use("kamailio", {"token": "env:KAM_TOKEN"}) == ({"token": "env:KAM_TOKEN"}, ["token"])


def test_the_file_registry_resolves_env_references_too(monkeypatch: pytest.MonkeyPatch, ifbus_env: Path) -> None:
    FileRegistry(ifbus_env).add("kam1", kam("env:KAM_TOKEN"))
    monkeypatch.setenv("KAM_TOKEN", "file-host-token")
    assert FileRegistry(ifbus_env).get("kam1").auth["token"] == "file-host-token"
    assert "env:KAM_TOKEN" in (ifbus_env / "sip_servers.json").read_text()


def test_a_hand_written_bad_entry_is_named_and_never_rewritten(fleet: Redis, redis_url: str) -> None:
    fleet.hset(keys.REGISTRY, "bad", '{"type": "kamailio", "auth": [], "auth": {}}')
    with pytest.raises(RegistryError, match=r"'bad'.*appears twice"):
        RedisRegistry(redis_url).entries()
    fleet.hset(keys.REGISTRY, "bad", "{not json")
    with pytest.raises(RegistryError, match="'bad' is corrupt"):
        RedisRegistry(redis_url).entries()


def test_auth_values_from_files_are_read_once(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("file-token-1\n")
    (tmp_path / "two").write_text("a\nb\n")
    assert resolve_auth("kamailio", {"token": f"@{tmp_path / 'tok'}"}) == {"token": "file-token-1"}
    assert resolve_auth("asterisk", {"secret": "@dm1n"}) == {"secret": "@dm1n"}  # a password, not a path
    assert resolve_auth("kamailio", {"token": "env:KAM_TOKEN"}) == {"token": "env:KAM_TOKEN"}
    for bad, says in ((f"@{tmp_path / 'missing'}", "cannot read"), (f"@{tmp_path / 'two'}", "one line"),
                      ("env:1BAD", "env:NAME")):  # fmt: skip
        with pytest.raises(InvalidInput, match=says):
            resolve_auth("kamailio", {"token": bad})


def test_cli_add_on_one_home_list_on_another(fleet: Redis, redis_url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import os

    (tmp_path / "tok").write_text("cli-file-token-9\n")
    env = {k: v for k, v in os.environ.items() if k.startswith("IFBUS_") or k == "PATH"}
    added = subprocess.run([IFBUS, "add", "sip", "kam1", "--type", "kamailio", "--auth", f"token=@{tmp_path / 'tok'}"],
                           env={**env, "IFBUS_HOME": str(tmp_path / "a")}, capture_output=True, text=True)  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = subprocess.run([IFBUS, "list", "sip", "--json"], env={**env, "IFBUS_HOME": str(tmp_path / "b")},
                            capture_output=True, text=True)  # fmt: skip
    assert [s["name"] for s in json.loads(listed.stdout)["servers"]] == ["kam1"]
    assert "cli-file-token-9" not in listed.stdout + added.stdout
    assert not (tmp_path / "a" / "sip_servers.json").exists()
