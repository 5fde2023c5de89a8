"""`ifbus demo` as a new user runs it: the installed script, a real Kamailio and SIPp phones, and
nothing left behind afterwards — no process it started, no file — also when interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.lab import kamailio_available, sipp_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (kamailio_available() and sipp_available()), reason="kamailio and sipp are needed"),
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie is gone, only not yet reaped


def assert_nothing_left(pids: list[int], workdir: str) -> None:
    assert pids, "the demo names what it started"
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []
    assert not Path(workdir).exists()


def test_demo_places_answers_and_hangs_up_a_call(tmp_path: Path) -> None:
    home = tmp_path / "user-home"
    env = {**os.environ, "IFBUS_HOME": str(home)}
    env.pop("IFBUS_MODE", None)
    done = subprocess.run([str(BIN / "ifbus"), "demo", "--json", "--hold", "0.2"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    events = [e["event"] for e in report["timeline"]]
    assert events[0] == "submitted"
    for event in ("1001 ringing (INVITE)", "2000 ringing (INVITE)", "answered (the bus returned the call id)",
                  "hung up (the bus confirmed)", "2000 got BYE"):  # fmt: skip
        assert event in events, events
    assert events.index("2000 ringing (INVITE)") < events.index("answered (the bus returned the call id)")
    assert report["mode"] == "queue"  # redis-server is installed where this suite runs
    assert [(r["call_id"], r["active"]) for r in report["calls_while_up"]] == [(report["call_id"], True)]
    assert set(report["pids"]) == {"kamailio", "phone-1001", "phone-2000", "redis", "worker"}
    assert_nothing_left(list(report["pids"].values()), report["workdir"])
    assert not home.exists(), "the user's registry is never touched"
    assert os.listdir(tmp_path) == ["user-home"] or os.listdir(tmp_path) == []


def test_ctrl_c_mid_call_stops_and_removes_everything(tmp_path: Path) -> None:
    proc = subprocess.Popen([str(BIN / "ifbus"), "demo", "--json", "--hold", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:  # wait on the demo's own progress lines, not a fixed sleep
        lines.append(line)
        if "through the bus" in line:
            break
    time.sleep(1.0)  # the call is being placed or up: the hardest moment to be interrupted
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    text = "".join(lines) + err
    assert proc.returncode == 130, text
    assert json.loads(out)["outcome"] == "interrupted"
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    workdir = re.search(r"work folder (\S+)", text)
    assert workdir is not None
    assert len(pids) == 5, text
    assert_nothing_left(pids, workdir.group(1))
