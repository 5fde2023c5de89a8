"""deploy/opensips/opensips.cfg on a real OpenSIPS 3.4 with SIPp parties: test, answered call, hang-up, busy.

Runs where a lab OpenSIPS exists (IFBUS_OPENSIPS_BIN, else the lab's /opt/lab/opensips-root/sbin/opensips from
../shared/labs/opensips/build.sh) with the modules the config loads (IFBUS_OPENSIPS_MODULES, else
<root>/lib64/opensips/modules; cachedb_local is not in the lab script's list: docs/opensips.md says how to add
it), and sipp; skips with the reason otherwise. The config runs unchanged but for its two ports (SIP 5060,
HTTP 8888 → free loopback ports, in a test copy), with LD_LIBRARY_PATH naming the module directory because
OpenSIPS 3.4 has no built-in module path (deploy/opensips/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bus.errors import CallRejected
from bus.server import ServerEntry
from tests.conftest import BIN as IFBUS_BIN
from tests.lab import SippUA, _terminate, free_port, sipp_available, wait_for
from workers.adapters.opensips import OpensipsAdapter

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "deploy" / "opensips" / "opensips.cfg"
BIN = Path(os.environ.get("IFBUS_OPENSIPS_BIN", "/opt/lab/opensips-root/sbin/opensips"))
MODULES = Path(os.environ.get("IFBUS_OPENSIPS_MODULES", str(BIN.parent.parent / "lib64" / "opensips" / "modules")))
NEEDED = ("b2b_entities.so", "b2b_logic.so", "cachedb_local.so", "httpd.so", "mi_http.so", "tm.so")


def _missing() -> str | None:
    if not BIN.is_file():
        return f"no OpenSIPS binary at {BIN} (set IFBUS_OPENSIPS_BIN, or build ../shared/labs/opensips)"
    absent = [m for m in NEEDED if not (MODULES / m).is_file()]
    if absent:
        return f"modules missing in {MODULES}: {', '.join(absent)} (docs/opensips.md, 'Lab')"
    if not sipp_available():
        return "sipp not installed (apt-get install sip-tester)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


class OpenSips:
    """The project's config on free ports; ready once mi_http answers `version`."""

    def __init__(self, workdir: Path) -> None:
        self.sip_port = free_port(udp=True, tcp=False)
        self.http_port = free_port(udp=False, tcp=True)
        text = CFG.read_text()
        for old, new in (
            ("127.0.0.1:5060", f"127.0.0.1:{self.sip_port}"),
            ('modparam("httpd", "port", 8888)', f'modparam("httpd", "port", {self.http_port})'),
        ):
            assert old in text, f"{old} not in {CFG}"
            text = text.replace(old, new)
        self.cfg = workdir / "opensips.cfg"
        self.cfg.write_text(text)
        self.log = workdir / "opensips.log"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OpenSips:
        env = {**os.environ, "LD_LIBRARY_PATH": str(MODULES)}
        argv = [str(BIN), "-F", "-f", str(self.cfg), "-m", "32", "-M", "8"]
        self.proc = subprocess.Popen(
            argv, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"opensips exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                body = {"jsonrpc": "2.0", "method": "version", "id": 1}
                url = f"http://127.0.0.1:{self.http_port}/mi"
                return httpx.post(url, json=body, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_for(ready, 20.0, 0.05):
            self.__exit__()
            raise RuntimeError(f"opensips did not answer mi_http:\n{self.log.read_text(errors='replace')[-3000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None




@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenSips, dict[str, SippUA]]]:
    work = tmp_path_factory.mktemp("opensips")
    with OpenSips(work) as server:
        parties = {
            "alice": SippUA("answer_uas.xml", work, "alice", kamailio_port=server.sip_port),
            "bob": SippUA("answer_uas.xml", work, "bob", kamailio_port=server.sip_port),
            "busy": SippUA("busy_uas.xml", work, "busy", kamailio_port=server.sip_port),
        }
        for ua in parties.values():
            ua.start()
        try:
            yield server, parties
        finally:
            for ua in parties.values():
                ua.stop()


def adapter(server: OpenSips) -> OpensipsAdapter:
    entry = ServerEntry.build(
        "opensips", {"user": "admin", "secret": "pass", "domain": "127.0.0.1"}, host="127.0.0.1", port=server.http_port
    )
    return OpensipsAdapter("myopensips", entry)


def party(ua: SippUA) -> str:
    return f"{ua.name}@127.0.0.1:{ua.port}"


def test_test_names_34(lab: tuple[OpenSips, dict[str, SippUA]]) -> None:
    answer = adapter(lab[0]).test()
    assert answer.message.startswith("OpenSIPS 3.4.") and ", up " in answer.message


def test_answered_call_then_hangup_byes_both(lab: tuple[OpenSips, dict[str, SippUA]]) -> None:
    server, ua = lab
    a, b = ua["alice"], ua["bob"]
    invites = (a.received("INVITE"), b.received("INVITE"))
    byes = (a.received("BYE"), b.received("BYE"))
    ad = adapter(server)
    ref = ad.originate(party(a), party(b), {}, time.monotonic() + 20)
    answer = ad.follow(ref, time.monotonic() + 20)
    assert answer.call_id and answer.call_id == ref.call_id
    assert (a.received("INVITE"), b.received("INVITE")) == (invites[0] + 1, invites[1] + 1)
    hung = ad.hangup(answer.call_id, ref, {})
    assert hung.message.startswith("Hung up")
    assert a.wait_received("BYE", byes[0] + 1) and b.wait_received("BYE", byes[1] + 1)
    assert ad.hangup(answer.call_id, ref, {}).data["already_ended"] is True


def test_busy_callee_is_486(lab: tuple[OpenSips, dict[str, SippUA]]) -> None:
    server, ua = lab
    ad = adapter(server)
    ref = ad.originate(party(ua["alice"]), party(ua["busy"]), {}, time.monotonic() + 20)
    with pytest.raises(CallRejected) as err:
        ad.follow(ref, time.monotonic() + 20)
    assert err.value.sip_code == 486 and err.value.exit_code == 5 and err.value.details["leg"] == "to"


def test_queue_mode_call_and_hangup_through_ifbus_worker(
    lab: tuple[OpenSips, dict[str, SippUA]], start_worker, queue_mode: str
) -> None:
    """The spec's lines through a real `ifbus worker opensips` (private Redis): call → exit 0 with the
    b2b key, each party one INVITE; hangup through the CallRef → both parties get a BYE."""
    server, ua = lab
    a, b = ua["alice"], ua["bob"]
    add = _cli(
        "add", "sip", "myopensips", "opensips", "--auth", "user=admin", "secret=pass", "domain=127.0.0.1",
        "--host", "127.0.0.1", "--port", str(server.http_port), "--opt", f"sip_port={server.sip_port}",
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    start_worker("opensips")
    invites, byes = (a.received("INVITE"), b.received("INVITE")), (a.received("BYE"), b.received("BYE"))
    called = _cli("call", "sip", "myopensips", f"from={party(a)}", f"to={party(b)}", "--json")
    result = json.loads(called.stdout)
    assert called.returncode == 0 and result["mode"] == "queue" and result["call_id"], called.stderr
    assert (a.received("INVITE"), b.received("INVITE")) == (invites[0] + 1, invites[1] + 1)
    hung = _cli("hangup", "sip", "myopensips", f"call_id={result['call_id']}", "--json")
    assert hung.returncode == 0, hung.stderr
    assert a.wait_received("BYE", byes[0] + 1) and b.wait_received("BYE", byes[1] + 1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IFBUS_BIN / "ifbus"), *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
