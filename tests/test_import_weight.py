"""The light commands stay light: no heavy library loads for `--help`, `list`, `add`, `remove`, or
a completion request, and `--help` and `list sip` load no click at all (producer/entry.py). Each
costs milliseconds of start-up (`python -X importtime`; bench/startup.py measures whole processes),
and these commands run in shell loops and on every TAB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pydantic", "pydantic_settings", "redis", "rq", "httpx", "structlog", "workers")

PROBE = """
import json, sys
sys.argv = ["ifbus", *json.loads(sys.argv[1])]
from producer.entry import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def loaded(argv: list[str], env: dict[str, str]) -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.fixture
def env(ifbus_env: Path, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "IFBUS_HOME": str(ifbus_env), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for i in range(5):
        argv = ["add", "sip", f"k{i}", "--type", "kamailio", "--auth", "token=t", "realm=127.0.0.1"]
        subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], env=env, check=True, capture_output=True)
    return env


LIGHT = [
    ["--help"],
    ["list", "sip"],
    ["list", "sip", "--json"],
    ["add", "sip", "new", "--type", "kamailio", "--auth", "token=t"],
    ["remove", "sip", "k0"],
    ["test", "--help"],
    ["list", "sips", "--json"],
]


@pytest.mark.parametrize("argv", LIGHT, ids=[" ".join(a) for a in LIGHT])
def test_light_commands_load_no_heavy_module(env: dict[str, str], argv: list[str]) -> None:
    assert loaded(argv, env).isdisjoint(HEAVY), sorted(loaded(argv, env) & set(HEAVY))


CLICK_FREE = [["--help"], ["-h"], ["list", "sip"], ["list", "sip", "--json"]]


@pytest.mark.parametrize("argv", CLICK_FREE, ids=[" ".join(a) for a in CLICK_FREE])
def test_help_and_list_load_no_click(env: dict[str, str], argv: list[str]) -> None:
    """Importing click alone costs ~4x a bare Python start; issue 16 allows these lines 3x in all.
    (The first `--help` renders with click and caches the text: the second must not load it.)"""
    loaded(argv, env)
    assert "click" not in loaded(argv, env)


def test_the_probe_does_see_click(env: dict[str, str]) -> None:
    assert "click" in loaded(["list", "sip", "extra"], env)


def test_completion_loads_no_heavy_module(env: dict[str, str]) -> None:
    completing = {**env, "_IFBUS_COMPLETE": "bash_complete", "COMP_WORDS": "ifbus test sip k", "COMP_CWORD": "3"}
    assert loaded([], completing).isdisjoint(HEAVY)


def test_the_probe_does_see_heavy_modules(env: dict[str, str]) -> None:
    """The check above would pass on a probe that saw nothing: `schema` must load pydantic."""
    assert "pydantic" in loaded(["schema"], env)


def test_queue_mode_producer_loads_no_logging_stack(env: dict[str, str], redis_url: str) -> None:
    """A queue-mode producer logs nothing, so structlog stays out (here: no worker serves the queue)."""
    queue = {**env, "IFBUS_MODE": "queue", "IFBUS_REDIS_URL": redis_url}
    modules = loaded(["test", "sip", "k1", "--json"], queue)
    assert "redis" in modules and "structlog" not in modules and "workers" not in modules


def test_queue_mode_submit_loads_no_heavy_module(env: dict[str, str], redis_url: str) -> None:
    """With a worker on the queue, `test` queues through producer.light: no redis-py, rq, pydantic,
    pydantic-settings or structlog (a registered worker that never takes the job: --no-wait)."""
    from redis import Redis

    Redis.from_url(redis_url).sadd("rq:workers:sip.kamailio", "rq:worker:pretend")
    queue = {**env, "IFBUS_MODE": "queue", "IFBUS_REDIS_URL": redis_url}
    assert loaded(["test", "sip", "k1", "--no-wait", "--json"], queue).isdisjoint(HEAVY)
    assert Redis.from_url(redis_url).llen("rq:queue:sip.kamailio") == 1
