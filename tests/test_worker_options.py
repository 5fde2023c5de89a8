"""Options that tune the fleet: the rate limits' 0 = "no limit" (bus.ratelimit) and `ifbus worker
--max-inflight` (workers.follower reads it in every worker process, --concurrency children included)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from producer.cli import cli


@pytest.mark.parametrize(
    ("option", "ok"),
    [("cps=0", True), ("cps=2.5", True), ("cps=100000", True), ("cps=-1", False), ("cps=nan", False),
     ("max_concurrent=0", True), ("max_concurrent=3", True), ("max_concurrent=1.5", False),
     ("max_concurrent=100001", False)],
)
def test_rate_limit_options(option: str, ok: bool) -> None:
    result = CliRunner().invoke(cli, ["add", "sip", "k", "--type", "kamailio", "--auth", "token=t", "--opt", option])
    assert (result.exit_code == 0) is ok, result.output
    if not ok:
        assert result.exit_code == 2 and "0: no limit" in result.stderr


def test_max_inflight_reaches_every_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, str | None] = {}
    monkeypatch.setenv("IFBUS_MAX_INFLIGHT", "7")  # restored after the test, whatever the command sets
    monkeypatch.setattr("bus.redis_conn.connect", lambda *a, **k: None)
    monkeypatch.setattr(
        "workers.worker.run_workers", lambda *a, **k: seen.update(env=os.environ.get("IFBUS_MAX_INFLIGHT"))
    )
    result = CliRunner().invoke(cli, ["worker", "kamailio", "--max-inflight", "25"])
    assert result.exit_code == 0, result.output
    assert seen == {"env": "25"}
    bad = CliRunner().invoke(cli, ["worker", "kamailio", "--max-inflight", "0"])
    assert bad.exit_code == 2
