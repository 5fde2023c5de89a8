"""The registry file: spec shape, permissions, atomic writes under a lock, corrupt files left alone."""

from __future__ import annotations

import json
import multiprocessing
import stat
from pathlib import Path

import pytest

from bus.errors import InvalidInput, NotFound, RegistryError
from bus.registry import FileRegistry
from bus.server import ServerEntry


def kam(token: str = "xyz789") -> ServerEntry:
    return ServerEntry.build("kamailio", {"token": token, "realm": "sip.local"})


def test_round_trip_in_the_spec_shape(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path / "home")
    registry.add("mykam", kam())
    raw = json.loads((tmp_path / "home" / "sip_servers.json").read_text())
    assert raw["mykam"]["type"] == "kamailio"
    assert raw["mykam"]["auth"] == {"token": "xyz789", "realm": "sip.local"}
    assert raw["mykam"]["host"] == "sip.local"  # realm is the host default
    assert registry.get("mykam") == kam()
    assert registry.remove("mykam").type == "kamailio"
    with pytest.raises(NotFound, match="Not found: mykam"):
        registry.get("mykam")


def test_folder_0700_and_file_0600(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path / "home")
    registry.add("mykam", kam())
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600


def test_readding_is_refused_unless_replace(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path)
    registry.add("mykam", kam("one"))
    with pytest.raises(InvalidInput, match="--replace"):
        registry.add("mykam", kam("two"))
    assert registry.get("mykam").auth["token"] == "one"
    registry.add("mykam", kam("two"), replace=True)
    assert registry.get("mykam").auth["token"] == "two"


def _add_many(folder: str, start: int) -> None:
    registry = FileRegistry(Path(folder))
    for i in range(start, start + 10):
        registry.add(f"srv{i}", kam(f"token{i}"))


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path), n * 10)) for n in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert sorted(FileRegistry(tmp_path).entries()) == sorted(f"srv{i}" for i in range(60))
    assert not list(tmp_path.glob(".sip_servers.*.tmp"))  # no temp file left behind


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"\xff\xfe\x00garbage", b'{"x": {"type": "nosuch"}}', b'{"a b": {"type": "kamailio"}}'],
)
def test_corrupt_file_is_reported_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    registry = FileRegistry(tmp_path)
    registry.path.write_bytes(content)
    with pytest.raises(RegistryError, match=r"sip_servers\.json"):
        registry.entries()
    with pytest.raises(RegistryError):
        registry.add("mykam", kam())
    assert registry.path.read_bytes() == content


def test_unreadable_registry_is_a_clear_error(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path)
    registry.path.mkdir()  # a directory where the file should be: unreadable even for root
    with pytest.raises(RegistryError, match="Cannot read registry"):
        registry.entries()


def test_entry_checks_refuse_bad_values() -> None:
    with pytest.raises(InvalidInput, match="control characters"):
        ServerEntry.build("kamailio", {"token": "a\r\nb"})
    with pytest.raises(InvalidInput, match="Unknown server type"):
        ServerEntry.build("nosuch", {})
    with pytest.raises(InvalidInput, match="host"):
        ServerEntry.build("kamailio", {}, host="evil/host")
