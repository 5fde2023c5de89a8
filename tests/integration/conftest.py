"""What the tests against the real Kamailio lab (tests/lab.py) share: the marks that skip them where the
binaries are missing, one Kamailio per module with its timers, SIPp UAs stopped after each test, and the
`ifbus add` that points the bus at that Kamailio.

Why here: several modules drive the same lab the same way; a module that needs another Kamailio (its own
token or timers) defines its own `kam` fixture, which takes precedence over this one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.lab import Kamailio, SippUA, kamailio_available, sipp_available

#: `pytestmark = KAMAILIO_LAB` (or `[*KAMAILIO_LAB, …]`) in a module that needs kamailio and sipp
KAMAILIO_LAB = [
    pytest.mark.integration,
    pytest.mark.skipif(not kamailio_available(), reason="kamailio binary not installed (apt-get install kamailio)"),
    pytest.mark.skipif(not sipp_available(), reason="sipp binary not installed (apt-get install sip-tester)"),
]

TOKEN = "ifbus-test-token"
FR_TIMER_MS = 2000
FR_INV_TIMER_MS = 5000

UaFactory = Callable[[str, str], SippUA]


@pytest.fixture(scope="module")
def kam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """One Kamailio for the module: bearer TOKEN, fr_timer FR_TIMER_MS, fr_inv_timer FR_INV_TIMER_MS."""
    with Kamailio(tmp_path_factory.mktemp("kam"), token=TOKEN, fr_timer=FR_TIMER_MS, fr_inv_timer=FR_INV_TIMER_MS) as k:
        yield k


@pytest.fixture
def ua(kam: Kamailio, tmp_path: Path) -> Iterator[UaFactory]:
    """Factory: ``ua("refer_uas.xml", "alice")`` starts a SIPp UA next to `kam`, stopped after the test."""
    with ExitStack() as stack:

        def make(scenario: str, name: str) -> SippUA:
            return stack.enter_context(SippUA(scenario, tmp_path, name, kamailio_port=kam.sip_port))

        yield make


def register(name: str, kam: Kamailio, token: str | None = None, *, fr_inv_timer_ms: int | None = None) -> None:
    """`ifbus add sip <name> --type kamailio … --replace` for `kam`: its own token unless `token` is given (a
    wrong one, for auth tests), its timers as the adapter's fr_timer/fr_inv_timer unless `fr_inv_timer_ms`
    says otherwise."""
    fr_inv = kam.fr_inv_timer if fr_inv_timer_ms is None else fr_inv_timer_ms
    result = subprocess.run(
        [str(BIN / "ifbus"), "add", "sip", name, "--type", "kamailio", "--auth",
         f"token={kam.token if token is None else token}", "realm=127.0.0.1", "--port", str(kam.http_port),
         "--opt", f"fr_timer={kam.fr_timer / 1000:g}", f"fr_inv_timer={fr_inv / 1000:g}", f"sip_port={kam.sip_port}",
         "--replace"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
