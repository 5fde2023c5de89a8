"""Detection rules (bus/detect.py) on the real strings of docs/reference/vendors.md §9.

Sources per string: vendors.md §1.5 (Asterisk PBX, FPBX, AMI banner, HTTP Asterisk/), §2.5 (FreeSWITCH
mod_sofia User-Agent, bare FreeSWITCH from FusionPBX's profiles, ESL banners, mod_xml_rpc), §3.4 and
kamailio-lab.md §5 (kamailio Server, core.version), §4.4 and transcripts/opensips-3.4.18 (OpenSIPS
Server, mi `version` answer), §5.4 (Twilio Gateway), §9 (cloud hosts). The AMI banner
`Asterisk Call Manager/11.0.0` is from transcripts/asterisk-22.10.1/ami_transcript.txt.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bus.detect import detect_for_add, detect_host
from bus.errors import InvalidInput, Unreachable
from bus.fingerprint import Evidence, classify, cloud_type, fingerprint
from tests.lab import free_port

SIP_STRINGS = [
    ("sip-server", "Asterisk PBX 20.5.0", "asterisk", "20.5.0", "high", "Asterisk PBX 20.5.0"),
    ("sip-server", "Asterisk PBX 22.10.1", "asterisk", "22.10.1", "high", "Asterisk PBX 22.10.1"),
    ("sip-user-agent", "Asterisk PBX", "asterisk", None, "medium", "Asterisk PBX"),
    (
        "sip-user-agent",
        "FreeSWITCH-mod_sofia/1.10.12-release~64bit",
        "freeswitch",
        "1.10.12",
        "high",
        "FreeSWITCH 1.10.12",
    ),
    (
        "sip-user-agent",
        "FreeSWITCH-mod_sofia/1.10.7-dev+git~20210825T173719Z~dd2411336f~64bit",
        "freeswitch",
        "1.10.7",
        "high",
        "FreeSWITCH 1.10.7",
    ),
    ("sip-server", "OpenSIPS (3.4.18 (x86_64/linux))", "opensips", "3.4.18", "high", "OpenSIPS 3.4.18"),
    ("sip-server", "OpenSIPS (1.7.1-notls (i386/linux))", "opensips", "1.7.1", "high", "OpenSIPS 1.7.1"),
    ("sip-server", "kamailio (5.6.3 (x86_64/linux))", "kamailio", "5.6.3", "high", "Kamailio 5.6.3"),
    ("sip-server", "Kamailio (1.5.3-notls (i386/linux))", "kamailio", "1.5.3", "high", "Kamailio 1.5.3"),
    ("sip-user-agent", "FPBX-16.0.40(18.20.0)", "asterisk", "18.20.0", "high", "FreePBX 16.0.40 (Asterisk 18.20.0)"),
    (
        "sip-user-agent",
        "FPBX-16.0.40.9(18.24.2)",
        "asterisk",
        "18.24.2",
        "high",
        "FreePBX 16.0.40.9 (Asterisk 18.24.2)",
    ),
    ("sip-user-agent", "Twilio Gateway", "twilio", None, "medium", "Twilio"),
    ("sip-server", "Twilio", "twilio", None, "medium", "Twilio"),
    ("sip-user-agent", "FreeSWITCH", "fusionpbx", None, "low", "FusionPBX (FreeSWITCH, likely)"),
]


@pytest.mark.parametrize(("source", "value", "type_", "version", "confidence", "label"), SIP_STRINGS)
def test_sip_banners(source: str, value: str, type_: str, version: str | None, confidence: str, label: str) -> None:
    detection = classify([Evidence(source, value)])
    assert (detection.type, detection.version, detection.confidence) == (type_, version, confidence)
    assert detection.label == label
    assert not detection.ambiguous
    assert detection.summary().startswith(f"Detected: {label} ({confidence}, evidence: ")


@pytest.mark.parametrize(
    "value", ["Asterisk-lab-peer", "lab-probe/0.1", "", "freeswitch", "FreeSWITCH 1.10", "Cisco-SIPGateway/IOS-15"]
)
def test_unknown_banners_are_kept_but_not_detected(value: str) -> None:
    detection = classify([Evidence("sip-server", value)])
    assert detection.type is None and detection.confidence == "none" and detection.answered
    assert detection.summary() == "Not detected"


@pytest.mark.parametrize(
    ("banner", "major"),
    [
        ("Asterisk Call Manager/2.10.6", "13"),
        ("Asterisk Call Manager/5.0.5", "16"),
        ("Asterisk Call Manager/7.0.3", "18"),
        ("Asterisk Call Manager/9.0.0", "20"),
        ("Asterisk Call Manager/10.0.0", "21"),
        ("Asterisk Call Manager/11.0.0", "22"),
        ("Asterisk Call Manager/12.0.0", "23"),
        ("Asterisk Call Manager/13.0.0", None),  # master: no release to name
    ],
)
def test_ami_banner_maps_ami_version_to_asterisk_major(banner: str, major: str | None) -> None:
    detection = classify([Evidence("ami-banner", banner)])
    assert (detection.type, detection.version, detection.confidence) == ("asterisk", major, "high")
    assert banner.split("/")[1] in (detection.label or "")


def test_esl_banners() -> None:
    ok = classify([Evidence("esl-banner", "Content-Type: auth/request")])
    assert (ok.type, ok.confidence) == ("freeswitch", "high")
    rude = classify([Evidence("esl-banner", "Content-Type: text/rude-rejection Content-Length: 23 Access Denied")])
    assert rude.type == "freeswitch" and "refused" in (rude.label or "")
    # an unknown TCP banner is tried against both
    assert classify([Evidence("tcp-banner", "Content-Type: auth/request")]).type == "freeswitch"
    assert classify([Evidence("tcp-banner", "SSH-2.0-OpenSSH_9.2")]).type is None


@pytest.mark.parametrize(
    ("value", "type_", "version"),
    [
        ("Asterisk/20.5.0", "asterisk", "20.5.0"),
        ("Asterisk", "asterisk", None),
        ("FreeSWITCH-1.10.12-mod_xml_rpc", "freeswitch", "1.10.12"),
        ("kamailio (5.7.4 (x86_64/linux))", "kamailio", "5.7.4"),
        ("nginx", None, None),
        ("nginx/1.22.1", None, None),
    ],
)
def test_http_server_headers(value: str, type_: str | None, version: str | None) -> None:
    detection = classify([Evidence("http-server", value)])
    assert (detection.type, detection.version) == (type_, version)


@pytest.mark.parametrize(
    ("answer", "type_", "version"),
    [
        # kamailio-lab.md §5(b) (note the trailing space in the result)
        ('{"jsonrpc":"2.0","result":"kamailio 5.6.3 (x86_64/linux) ","id":1}', "kamailio", "5.6.3"),
        ("kamailio 6.0.7 (x86_64/linux) 1a2b3c", "kamailio", "6.0.7"),
        # transcripts/opensips-3.4.18/mi_basic_transcript.txt
        ('{"jsonrpc":"2.0","result":{"Server":"OpenSIPS (3.4.18 (x86_64/linux))"},"id":1}', "opensips", "3.4.18"),
        ('{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":1}', None, None),
        ("not json", None, None),
        ("[1, 2]", None, None),
    ],
)
def test_jsonrpc_answers(answer: str, type_: str | None, version: str | None) -> None:
    detection = classify([Evidence("jsonrpc", answer)])
    assert (detection.type, detection.version) == (type_, version)


@pytest.mark.parametrize(
    ("host", "type_", "confidence"),
    [
        ("api.twilio.com", "twilio", "high"),
        ("https://api.twilio.com/2010-04-01/Accounts/AC1.json", "twilio", "high"),
        ("API.TWILIO.COM.", "twilio", "high"),
        ("example.sip.twilio.com", "twilio", "medium"),
        ("api.nexmo.com", "vonage", "high"),
        ("rest.nexmo.com", "vonage", "high"),
        ("https://api.nexmo.com:443/v1/calls", "vonage", "high"),
        ("twilio.com.evil.example", None, None),
        ("nottwilio.com", None, None),
        ("10.0.0.5", None, None),
    ],
)
def test_cloud_hosts(host: str, type_: str | None, confidence: str | None) -> None:
    assert cloud_type(host) == type_
    detection = classify([Evidence("host", host)])
    assert detection.type == type_
    if confidence:
        assert detection.confidence == confidence


def test_agreeing_probes_merge_and_the_precise_version_wins() -> None:
    detection = classify(
        [
            Evidence("ami-banner", "Asterisk Call Manager/9.0.0"),
            Evidence("sip-server", "Asterisk PBX 20.5.0"),
            Evidence("http-server", "Asterisk"),
        ]
    )
    assert (detection.type, detection.version, detection.confidence) == ("asterisk", "20.5.0", "high")
    assert detection.label == "Asterisk PBX 20.5.0"
    assert len(detection.candidates[0].evidence) == 3 and not detection.notes


def test_freepbx_names_the_result() -> None:
    detection = classify(
        [Evidence("sip-user-agent", "FPBX-16.0.40(18.20.0)"), Evidence("ami-banner", "Asterisk Call Manager/7.0.3")]
    )
    assert (detection.type, detection.version, detection.label) == (
        "asterisk",
        "18.20.0",
        "FreePBX 16.0.40 (Asterisk 18.20.0)",
    )


def test_bare_freeswitch_with_esl_is_fusionpbx_medium() -> None:
    detection = classify(
        [Evidence("sip-user-agent", "FreeSWITCH"), Evidence("esl-banner", "Content-Type: auth/request")]
    )
    assert (detection.type, detection.confidence, detection.ambiguous) == ("fusionpbx", "medium", False)


def test_versions_that_disagree_are_noted() -> None:
    detection = classify(
        [Evidence("ami-banner", "Asterisk Call Manager/11.0.0"), Evidence("sip-server", "Asterisk PBX 20.5.0")]
    )
    assert detection.type == "asterisk" and detection.version == "20.5.0"
    assert any("disagree" in note for note in detection.notes)


def test_kamailio_in_front_of_asterisk_is_ambiguous() -> None:
    detection = classify(
        [
            Evidence("sip-server", "kamailio (5.6.3 (x86_64/linux))", "udp 10.0.0.5:5060, 200 OK"),
            Evidence("ami-banner", "Asterisk Call Manager/9.0.0", "tcp 10.0.0.5:5038"),
        ]
    )
    assert detection.ambiguous and detection.type is None
    assert [c.type for c in detection.candidates] == ["asterisk", "kamailio"]  # management banner first
    assert detection.summary().startswith("Ambiguous: asterisk (Asterisk 20 (AMI 9.0.0), high); kamailio")
    assert any("--type" in note for note in detection.notes)


def test_nothing_seen() -> None:
    detection = classify([], tried=["SIP OPTIONS udp 10.0.0.5:5060: no answer"])
    assert detection.type is None and not detection.answered and detection.tried
    assert detection.to_dict()["confidence"] == "none"


def test_fingerprint_of_one_string() -> None:
    candidate = fingerprint(Evidence("sip-server", "kamailio (5.6.3 (x86_64/linux))"))
    assert candidate is not None and candidate.type == "kamailio"
    assert fingerprint(Evidence("sip-server", "x" * 10_000)) is None


# ---------------------------------------------------------------- detect_host with banner peers on loopback


class BannerServer:
    """A TCP listener on 127.0.0.1 that greets each connection with fixed bytes (an AMI or ESL stand-in)."""

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.banner)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ami() -> Iterator[BannerServer]:
    server = BannerServer(b"Asterisk Call Manager/11.0.0\r\n")  # transcripts/asterisk-22.10.1/ami_transcript.txt
    yield server
    server.close()


@pytest.fixture
def esl() -> Iterator[BannerServer]:
    server = BannerServer(b"Content-Type: auth/request\n\n")  # vendors.md §2.5, Appendix A
    yield server
    server.close()


def test_detect_host_reads_the_ami_banner(ami: BannerServer) -> None:
    detection = detect_host("127.0.0.1", sip_port=free_port(), timeout=0.3, ami_port=ami.port, esl_port=free_port())
    assert (detection.type, detection.version) == ("asterisk", "22")
    assert any("no SIP answer" in line for line in detection.tried)
    assert any(f"AMI 127.0.0.1:{ami.port}" in line for line in detection.tried)


def test_detect_host_reads_the_esl_banner(esl: BannerServer) -> None:
    detection = detect_host("127.0.0.1", sip_port=free_port(), timeout=0.3, ami_port=free_port(), esl_port=esl.port)
    assert detection.type == "freeswitch"


def test_detect_host_knows_cloud_hosts_without_probing() -> None:
    detection = detect_host("api.twilio.com")
    assert detection.type == "twilio" and detection.tried == ("host name api.twilio.com",)


def test_detect_for_add_nothing_answers_is_unreachable() -> None:
    options = {"sip_port": str(free_port()), "ami_port": str(free_port()), "esl_port": str(free_port())}
    with pytest.raises(Unreachable) as caught:
        detect_for_add("127.0.0.1", None, options, timeout=0.3)
    assert caught.value.exit_code == 4
    assert "SIP OPTIONS udp" in caught.value.message and "AMI" in caught.value.message


def test_detect_for_add_moves_the_management_port_and_drops_probe_options(ami: BannerServer) -> None:
    options = {"sip_port": str(free_port()), "ami_port": str(ami.port), "esl_port": str(free_port())}
    auto = detect_for_add("127.0.0.1", None, options, timeout=0.3)
    assert (auto.type, auto.port) == ("asterisk", ami.port)
    assert auto.options == {"sip_port": options["sip_port"]}


def test_detect_for_add_ambiguous_is_invalid_input(ami: BannerServer, esl: BannerServer) -> None:
    options = {"sip_port": str(free_port()), "ami_port": str(ami.port), "esl_port": str(esl.port)}
    with pytest.raises(InvalidInput) as caught:
        detect_for_add("127.0.0.1", None, options, timeout=0.3)
    assert caught.value.exit_code == 2
    assert "--type asterisk or --type freeswitch" in caught.value.message


@pytest.mark.parametrize("bad", ["0", "70000", "x", "-1"])
def test_detect_for_add_checks_port_options(bad: str) -> None:
    with pytest.raises(InvalidInput):
        detect_for_add("127.0.0.1", None, {"sip_port": bad})
