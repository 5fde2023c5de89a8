"""Number forms and the Q.850 ↔ SIP tables in bus/sip.py (one home for SIP facts).

Table values: docs/reference/vendors.md §8 (RFC 3398 §7.2.4.1 / §8.2.6.1, FreeSWITCH and Asterisk columns).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import InvalidInput
from bus.sip import (
    E164_RE,
    Q850_NAMES,
    Q850_TO_SIP,
    REASON_PHRASES,
    SIP_TO_Q850,
    TelUri,
    for_vendor,
    parse_tel,
    q850_to_sip,
    reason_phrase,
    sip_to_q850,
    to_e164,
    vonage_number,
)


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("tel:+1-212-555-0100", TelUri("+12125550100", True)),
        ("<tel:+44 (20) 7183.8750>", TelUri("+442071838750", True)),
        ("tel:+12125550100;ext=42", TelUri("+12125550100", True, None, "42")),
        ("tel:7042;phone-context=example.com", TelUri("7042", False, "example.com")),
        ("TEL:*21#;phone-context=+1", TelUri("*21#", False, "+1")),
    ],
)
def test_parse_tel(uri: str, parsed: TelUri) -> None:
    assert parse_tel(uri) == parsed


@pytest.mark.parametrize("uri", ["tel:1234", "tel:+0441234", "tel:+1415555010012345", "tel:abc", "sip:1@x", "tel:"])
def test_parse_tel_refuses(uri: str) -> None:
    with pytest.raises(InvalidInput):
        parse_tel(uri)


@pytest.mark.parametrize(
    ("value", "e164"),
    [
        ("+1 (415) 555-0100", "+14155550100"),
        ("0044 20 7183 8750", "+442071838750"),
        ("tel:+1-415-555-0100", "+14155550100"),
        ("14155550100", None),  # bare digits: no country code guessed
        ("1001", None),
        ("+0123", None),
        ("tel:7042;phone-context=example.com", None),
        ("sip:alice@example.com", None),
    ],
)
def test_to_e164(value: str, e164: str | None) -> None:
    assert to_e164(value) == e164


@pytest.mark.parametrize(
    ("value", "vendor", "expected"),
    [
        ("+1 415 555 0100", "twilio", "+14155550100"),
        ("0014155550100", "twilio", "+14155550100"),
        ("tel:+14155550100", "twilio", "+14155550100"),
        ("client:alice", "twilio", "client:alice"),
        ("14155550100", "twilio", "14155550100"),
        ("+1 415 555 0100", "vonage", "14155550100"),
        ("0014155550100", "vonage", "14155550100"),
        ("tel:+14155550100", "vonage", "14155550100"),
        ("14155550100", "vonage", "14155550100"),
        ("sip:alice@example.com", "vonage", "sip:alice@example.com"),
        ("1001", "kamailio", "sip:1001@sip.local"),
        ("alice@10.0.0.5", "opensips", "sip:alice@10.0.0.5"),
        ("tel:+14155550100", "kamailio", "sip:+14155550100@sip.local;user=phone"),
        ("1001", "asterisk", "1001"),
        ("+1 (415) 555-0100", "freeswitch", "+14155550100"),
        ("tel:+14155550100", "fusionpbx", "+14155550100"),
        ("PJSIP/1001", "asterisk", "PJSIP/1001"),
    ],
)
def test_for_vendor(value: str, vendor: str, expected: str) -> None:
    assert for_vendor(value, vendor, role="to", domain="sip.local") == expected


@pytest.mark.parametrize(
    ("value", "vendor"),
    [
        ("+0441234", "twilio"),
        ("+1415abc", "vonage"),
        ("alice", "vonage"),
        ("+", "vonage"),
        ("1001", "skype"),
        ("a\r\nb", "asterisk"),
    ],
)
def test_for_vendor_refuses(value: str, vendor: str) -> None:
    with pytest.raises(InvalidInput):
        for_vendor(value, vendor, domain="sip.local")


def test_sip_uri_vendors_need_a_domain() -> None:
    with pytest.raises(InvalidInput):
        for_vendor("1001", "kamailio")


def test_twilio_adapter_uses_the_shared_function() -> None:
    from bus.sip import for_vendor
    from workers.adapters import twilio

    assert twilio.for_vendor is for_vendor
    assert not hasattr(twilio, "_INTERNATIONAL") and not hasattr(twilio, "_SEPARATORS")


@settings(database=None, max_examples=200)
@given(st.text(max_size=40))
def test_vonage_numbers_are_digits_or_sip(raw: str) -> None:
    try:
        sent = vonage_number(raw, "to")
    except InvalidInput:
        return
    assert sent.isascii() and (sent.isdigit() or sent.lower().startswith(("sip:", "sips:")))
    if sent.isdigit():
        assert E164_RE.fullmatch("+" + sent) or len(sent) <= 15


# ---------------------------------------------------------------- Q.850 ↔ SIP


@pytest.mark.parametrize(
    ("cause", "rfc", "freeswitch", "asterisk"),
    [  # vendors.md §8.1, row by row where the columns differ or matter most
        (1, 404, 404, 404),
        (16, None, 480, 603),
        (17, 486, 486, 486),
        (18, 408, 408, 408),
        (19, 480, 480, 480),
        (21, 403, 603, 403),
        (23, 410, 410, 302),
        (25, 480, 483, 603),  # not in RFC 3398's table: the "normal event" class default of q850_to_sip
        (29, 501, 501, 501),
        (34, 503, 503, 503),
        (38, 503, 503, 500),
        (58, 503, 503, 488),
        (65, 488, 488, 603),
        (88, 503, 488, 603),
        (102, 504, 504, 603),
        (111, 500, 480, 603),
        (127, 500, 480, 500),
    ],
)
def test_q850_to_sip(cause: int, rfc: int | None, freeswitch: int, asterisk: int) -> None:
    assert q850_to_sip(cause) == rfc
    assert q850_to_sip(cause, "freeswitch") == freeswitch
    assert q850_to_sip(cause, "fusionpbx") == freeswitch
    assert q850_to_sip(cause, "asterisk") == asterisk


def test_q850_freeswitch_only_causes() -> None:
    assert q850_to_sip(487, "freeswitch") == 487
    assert q850_to_sip(816, "freeswitch") == 603
    assert q850_to_sip(999, "freeswitch") == 480  # its default branch
    assert q850_to_sip(999, "asterisk") == 603  # ast_sip_session_terminate fallback


@pytest.mark.parametrize(
    ("code", "rfc", "freeswitch", "asterisk"),
    [  # vendors.md §8.2
        (400, 41, 41, 127),
        (403, 21, 21, 21),
        (404, 1, 1, 1),
        (408, 102, 102, 18),
        (480, 18, 18, 19),
        (483, 25, 25, 19),
        (485, 1, 3, 1),
        (486, 17, 17, 17),
        (487, 16, 487, 127),
        (488, 31, 88, 58),
        (500, 41, 41, 38),
        (501, 79, 79, 29),
        (502, 38, 38, 27),
        (503, 41, 41, 34),
        (513, 127, 127, 34),
        (600, 17, 17, 17),
        (603, 21, 21, 21),
        (604, 1, 3, 1),
        (606, 31, 88, 58),
        (607, 31, 819, 127),
        (499, 31, 31, 127),
        (599, 31, 31, 34),
    ],
)
def test_sip_to_q850(code: int, rfc: int, freeswitch: int, asterisk: int) -> None:
    assert sip_to_q850(code) == rfc
    assert sip_to_q850(code, "freeswitch") == freeswitch
    assert sip_to_q850(code, "asterisk") == asterisk


def test_tables_are_consistent() -> None:
    for cause, code in Q850_TO_SIP.items():
        assert cause in Q850_NAMES, cause
        assert code in REASON_PHRASES, code
    for code, cause in SIP_TO_Q850.items():
        assert code in REASON_PHRASES, code
        assert cause in Q850_NAMES, cause
    assert reason_phrase(q850_to_sip(17) or 0) == "Busy Here"
