"""Redis URLs for a fleet (bus/redis_conn.py): every form parses or is refused with exit 2; every
connection failure is exit 4 saying what was tried, within the command's --timeout, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.errors import InvalidInput, Unreachable
from bus.redis_conn import connect, limit, parse, safe_url
from tests.lab import free_port

IFBUS = str(Path(sys.executable).parent / "ifbus")


def test_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    target = parse("redis+sentinel://:pw@10.0.0.1:26379,[::1]:26380/ifbus/3?sentinel_password=spw")
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (target.service, target.db, target.password) == ("ifbus", 3, "pw")
    assert target.sentinel_kwargs == {"password": "spw"}
    assert "pw" not in target.shown.replace("sentinel", "") and "master 'ifbus'" in target.kind


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1/ifbus", "host:port"),
        ("redis+sentinel://h1:26379", "expected"),
        ("redis+sentinel://h1:26379/svc/x", "must be a number"),
        ("redis+sentinel://h1:26379/svc?ssl=1", "unknown option 'ssl'"),
        ("memcached://h:1", "unknown scheme"),
        ("127.0.0.1:6379", "unknown scheme"),
    ],
)
def test_unusable_urls_are_bad_input(url: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as caught:
        parse(url)
    assert caught.value.exit_code == 2


def test_the_url_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://:secret-pw@127.0.0.1:7000/2\n")
    assert parse(f"@{tmp_path / 'url'}").url == "redis://:secret-pw@127.0.0.1:7000/2"
    with pytest.raises(InvalidInput, match="cannot read"):
        parse(f"@{tmp_path / 'missing'}")
    (tmp_path / "two").write_text("redis://a:1\nredis://b:2\n")
    with pytest.raises(InvalidInput, match="one line"):
        parse(f"@{tmp_path / 'two'}")


def test_passwords_are_masked_in_every_form() -> None:
    for url in ("redis://:hunter22@h:1/0", "redis+sentinel://u:hunter22@h:1,h:2/s", "redis+sentinel://h:1/s?sentinel_password=hunter22"):
        assert "hunter22" not in safe_url(url)


def test_refused_is_unreachable_naming_what_was_tried() -> None:
    port = free_port(udp=False)
    with pytest.raises(Unreachable, match=f"127.0.0.1:{port}.*tried plain TCP.*refused") as caught:
        connect(f"redis://:pw@127.0.0.1:{port}/0")
    assert caught.value.exit_code == 4 and "pw@" not in caught.value.message
    with pytest.raises(Unreachable, match="no sentinel answered"):
        connect(f"redis+sentinel://127.0.0.1:{port}/ifbus")


def test_tls_url_at_a_plain_redis_gives_up_within_the_timeout(redis_url: str) -> None:
    """The issue's hang: a TLS client and a plain server each wait for the other to speak."""
    limit(0.5)
    try:
        started = time.monotonic()
        with pytest.raises(Unreachable, match=r"tried TLS.*no answer within 0\.5 s"):
            connect(redis_url.replace("redis://", "rediss://"))
        assert time.monotonic() - started < 2
    finally:
        limit(None)


def test_a_password_redis_refuses_a_client_without_one(redis_proc, tmp_path: Path) -> None:
    from redis import Redis

    admin = Redis(host=redis_proc.host, port=redis_proc.port)
    admin.execute_command("ACL", "SETUSER", "fleet", "on", ">right-pw", "~*", "+@all")
    try:
        with pytest.raises(Unreachable, match="password was refused"):
            connect(f"redis://fleet:wrong-pw@{redis_proc.host}:{redis_proc.port}/0")
        assert connect(f"redis://fleet:right-pw@{redis_proc.host}:{redis_proc.port}/0").ping()
    finally:
        admin.execute_command("ACL", "DELUSER", "fleet")


@pytest.mark.parametrize("scheme", ["rediss", "redis+sentinel"])
def test_cli_exits_4_within_its_timeout_never_internal_error(scheme: str, redis_url: str, ifbus_env: Path) -> None:
    """`ifbus test --timeout 1` with a TLS URL at a plain Redis, or a Sentinel URL at no sentinel."""
    env = {"IFBUS_HOME": str(ifbus_env), "PATH": "/usr/bin:/bin"}
    added = subprocess.run([IFBUS, "add", "sip", "kam", "--type", "kamailio", "--auth", "token=t0ken-abc"], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert added.returncode == 0, added.stderr
    host_port = redis_url.split("//")[1].split("/")[0]
    url = f"rediss://{host_port}/0" if scheme == "rediss" else f"redis+sentinel://127.0.0.1:{free_port(udp=False)}/ifbus"
    started = time.monotonic()
    result = subprocess.run([IFBUS, "test", "sip", "kam", "--timeout", "1", "--json"], capture_output=True, text=True,
                            env={**env, "IFBUS_MODE": "queue", "IFBUS_REDIS_URL": url}, timeout=30)  # fmt: skip
    assert time.monotonic() - started < 4
    assert result.returncode == 4, result.stderr
    assert json.loads(result.stdout)["outcome"] == "unreachable"
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr and "tried" in result.stderr
