"""OPTIONS probing and type detection against real SIP stacks on loopback.

- A real Kamailio 5.6 running deploy/kamailio/kamailio.cfg: its request_route answers out-of-dialog
  OPTIONS addressed to itself with `options_reply()` (the "Keepalive/test probes" block), carrying
  `Server: kamailio (5.6.x (x86_64/linux))` (docs/reference/kamailio-lab.md §5(a)). Detected over UDP and
  TCP, its version checked against JSON-RPC `core.version`.
- SIPp UASes (tests/sipp/options_uas.xml) answering with each vendor's real header string
  (docs/reference/vendors.md §9; FreeSWITCH in User-Agent, the others in Server).
- No answer: a port nobody listens on → retransmissions until the timeout, Unreachable naming what
  was tried; the CLI exits 4 with the same.
- `ifbus add sip edge1 --host 127.0.0.1 --opt sip_port=…` without a type stores kamailio
  (the installed ifbus in a subprocess, IFBUS_HOME in a temp dir, IFBUS_MODE=inline).

Every port is picked free at run time; only 127.0.0.1 is used. Skipped when kamailio/sipp are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bus.detect import detect_host, sip_reachability
from bus.errors import Unreachable
from bus.fingerprint import Evidence, classify
from bus.sip.options import options
from tests.lab import Kamailio, SippUA, free_port, kamailio_available, sipp_available
from tests.test_detect import BannerServer

IFBUS = Path(sys.executable).parent / "ifbus"
needs_kamailio = pytest.mark.skipif(
    not kamailio_available(), reason="kamailio binary not installed (apt-get install kamailio)"
)
needs_sipp = pytest.mark.skipif(not sipp_available(), reason="sipp binary not installed (apt-get install sip-tester)")
pytestmark = pytest.mark.integration

# (header, value, type, version): the strings of docs/reference/vendors.md §9 / the issue.
VENDOR_BANNERS = {
    "asterisk": ("Server", "Asterisk PBX 20.5.0", "asterisk", "20.5.0"),
    "freeswitch": ("User-Agent", "FreeSWITCH-mod_sofia/1.10.12-release~64bit", "freeswitch", "1.10.12"),
    "opensips": ("Server", "OpenSIPS (3.4.18 (x86_64/linux))", "opensips", "3.4.18"),
    "kamailio": ("Server", "kamailio (5.6.3 (x86_64/linux))", "kamailio", "5.6.3"),
    "freepbx": ("User-Agent", "FPBX-16.0.40(18.20.0)", "asterisk", "18.20.0"),
    "twilio": ("User-Agent", "Twilio Gateway", "twilio", None),
    "fusionpbx": ("User-Agent", "FreeSWITCH", "fusionpbx", None),
}


class OptionsUA(SippUA):
    """A SIPp UAS running options_uas.xml with its identity header set through `-key`."""

    def __init__(self, workdir: Path, name: str, header: str, value: str) -> None:
        super().__init__("options_uas.xml", workdir, name, kamailio_port=9)  # a UAS never sends to it
        self.keys = ["-key", "banner_name", header, "-key", "banner", value]

    def command(self) -> list[str]:
        argv = super().command()
        return [*argv[:-1], *self.keys, argv[-1]]


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    if not kamailio_available():
        pytest.skip("kamailio binary not installed (apt-get install kamailio)")
    with Kamailio(tmp_path_factory.mktemp("kamailio")) as server:
        yield server


@pytest.fixture(scope="module")
def vendor_uas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OptionsUA]]:
    if not sipp_available():
        pytest.skip("sipp binary not installed (apt-get install sip-tester)")
    workdir = tmp_path_factory.mktemp("sipp")
    uas = {name: OptionsUA(workdir, name, header, value) for name, (header, value, _, _) in VENDOR_BANNERS.items()}
    try:
        for ua in uas.values():
            ua.start()
        yield uas
    finally:
        with ThreadPoolExecutor(len(uas)) as pool:  # SIPp takes ~0.5 s to exit: stop them together
            list(pool.map(lambda ua: ua.stop(), uas.values()))


def core_version(kamailio: Kamailio) -> str:
    return str(kamailio.rpc("core.version")).split()[1]  # "kamailio 5.6.3 (x86_64/linux) " → "5.6.3"


# ---------------------------------------------------------------- real Kamailio


@needs_kamailio
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kamailio_answers_options_and_is_detected(kamailio: Kamailio, transport: str) -> None:
    result = options("127.0.0.1", kamailio.sip_port, transport=transport, timeout=2.0)
    assert result.code == 200 and result.transport == transport and result.transmissions == 1
    assert result.server is not None and result.server.startswith("kamailio (")
    detection = classify([Evidence("sip-server", result.server)])
    assert (detection.type, detection.version, detection.confidence) == ("kamailio", core_version(kamailio), "high")


@needs_kamailio
def test_detect_host_on_kamailio(kamailio: Kamailio) -> None:
    detection = detect_host("127.0.0.1", sip_port=kamailio.sip_port, ami_port=free_port(), esl_port=free_port())
    assert (detection.type, detection.version) == ("kamailio", core_version(kamailio))
    assert not detection.ambiguous
    wheres = [e.where for e in detection.evidence]
    assert any(w.startswith("udp ") for w in wheres) and any(w.startswith("tcp ") for w in wheres)
    assert detection.summary().startswith(f"Detected: Kamailio {core_version(kamailio)} (high, evidence: SIP Server")


@needs_kamailio
def test_kamailio_in_front_of_an_asterisk_ami_is_ambiguous(kamailio: Kamailio) -> None:
    ami = BannerServer(b"Asterisk Call Manager/9.0.0\r\n")
    try:
        detection = detect_host("127.0.0.1", sip_port=kamailio.sip_port, ami_port=ami.port, esl_port=free_port())
    finally:
        ami.close()
    assert detection.ambiguous and detection.type is None
    assert {c.type for c in detection.candidates} == {"kamailio", "asterisk"}


@needs_kamailio
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sip_reachability_for_the_test_command(kamailio: Kamailio, transport: str) -> None:
    seen = sip_reachability("127.0.0.1", kamailio.sip_port, transport, timeout=2.0)
    assert seen["answered"] and seen["code"] == 200 and seen["detected"] == "kamailio"
    assert seen["rtt_ms"] < 500 and seen["server"].startswith("kamailio (")
    assert seen["message"].startswith("SIP 200 OK in ") and transport in seen["message"]


def test_sip_reachability_without_an_answer() -> None:
    seen = sip_reachability("127.0.0.1", free_port(), "udp", timeout=0.6)
    assert seen["answered"] is False and seen["transmissions"] >= 2
    assert "no SIP answer" in seen["message"]


# ---------------------------------------------------------------- SIPp stand-ins with each vendor's header


@needs_sipp
@pytest.mark.parametrize("vendor", list(VENDOR_BANNERS))
def test_vendor_banner_detected_with_version(vendor_uas: dict[str, OptionsUA], vendor: str) -> None:
    header, value, type_, version = VENDOR_BANNERS[vendor]
    ua = vendor_uas[vendor]
    result = options("127.0.0.1", ua.port, timeout=2.0)
    assert result.code == 200
    assert (result.server if header == "Server" else result.user_agent) == value
    assert result.allow == ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS")
    detection = detect_host("127.0.0.1", sip_port=ua.port, timeout=2.0, ami_port=free_port(), esl_port=free_port())
    assert (detection.type, detection.version) == (type_, version), detection.summary()
    assert not detection.ambiguous
    assert any("tcp" in line and "refused" in line for line in detection.tried)  # SIPp here is UDP only


# ---------------------------------------------------------------- no answer


def test_nobody_listening_retransmits_and_gives_up_at_the_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        options("127.0.0.1", port, timeout=1.6)
    elapsed = time.monotonic() - started
    assert 1.55 <= elapsed < 2.0
    assert caught.value.details["transmissions"] == 3  # at 0, T1 = 0.5 s, 1.5 s
    assert f"127.0.0.1:{port} over udp (3 transmissions over 1.6 s" in caught.value.message


# ---------------------------------------------------------------- the CLI


def ifbus(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IFBUS_MODE="inline")
    return subprocess.run([str(IFBUS), *args], capture_output=True, text=True, env=env, timeout=30)


@needs_kamailio
def test_cli_add_without_type_stores_kamailio(kamailio: Kamailio, ifbus_env: Path) -> None:
    probe = f"sip_port={kamailio.sip_port} ami_port={free_port()} esl_port={free_port()}"
    done = ifbus("add", "sip", "edge1", "--host", "127.0.0.1", "--auth", "token=t", "--opt", *probe.split())
    assert done.returncode == 0, done.stderr
    version = core_version(kamailio)
    assert done.stdout.startswith(f"Detected: Kamailio {version} (high, evidence: SIP Server 'kamailio ({version}")
    assert "Added edge1 (kamailio) at 127.0.0.1" in done.stdout
    stored = json.loads((ifbus_env / "sip_servers.json").read_text())["edge1"]
    assert stored["type"] == "kamailio" and stored["host"] == "127.0.0.1"
    assert stored["port"] == kamailio.sip_port  # Kamailio's JSON-RPC shares its SIP TCP listener
    assert stored["options"] == {"sip_port": str(kamailio.sip_port)}  # the probe-only ports are not kept

    again = ifbus(
        "add", "sip", "edge2", "--type", "auto", "--host", "127.0.0.1", "--auth", "token=t", "--opt", *probe.split(),
        "--json",
    )
    assert again.returncode == 0, again.stderr
    answer = json.loads(again.stdout)
    assert answer["detected"]["type"] == "kamailio" and answer["added"]["type"] == "kamailio"


@needs_kamailio
def test_cli_add_ambiguous_exits_2(kamailio: Kamailio, ifbus_env: Path) -> None:
    ami = BannerServer(b"Asterisk Call Manager/11.0.0\r\n")
    try:
        done = ifbus(
            "add", "sip", "edge", "--host", "127.0.0.1",
            "--opt", f"sip_port={kamailio.sip_port}", f"ami_port={ami.port}", f"esl_port={free_port()}",
        )  # fmt: skip
    finally:
        ami.close()
    assert done.returncode == 2, done.stderr
    assert "more than one server type answered" in done.stderr
    assert "--type asterisk or --type kamailio" in done.stderr
    assert not (ifbus_env / "sip_servers.json").exists() or "edge" not in (ifbus_env / "sip_servers.json").read_text()


def test_cli_add_nothing_answers_exits_4(ifbus_env: Path) -> None:
    sip_port = free_port()
    done = ifbus(
        "add", "sip", "ghost", "--host", "127.0.0.1",
        "--opt", f"sip_port={sip_port}", f"ami_port={free_port()}", f"esl_port={free_port()}",
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert f"SIP OPTIONS udp: no SIP answer from 127.0.0.1:{sip_port} over udp" in done.stderr
    assert "transmissions" in done.stderr and "AMI 127.0.0.1:" in done.stderr and "ESL 127.0.0.1:" in done.stderr
