"""SIP facts shared by adapters: URI forms and reason phrases (RFC 3261 §19.1, §21)."""

from __future__ import annotations

import pytest

from bus.errors import InvalidInput
from bus.sip import reason_phrase, sip_uri, with_uri_param


@pytest.mark.parametrize(
    ("party", "expected"),
    [
        ("1001", "sip:1001@sip.local"),
        ("alice@10.0.0.5", "sip:alice@10.0.0.5"),
        ("sip:bob@127.0.0.1:16002", "sip:bob@127.0.0.1:16002"),
        ("<sips:carol@example.com>", "sips:carol@example.com"),
        ("SIP:dave@host", "SIP:dave@host"),
    ],
)
def test_sip_uri_forms(party: str, expected: str) -> None:
    assert sip_uri(party, "sip.local") == expected


@pytest.mark.parametrize("party", ["tel:+1555", "a b", '<x>@y"', "http://evil"])
def test_sip_uri_refuses_what_is_not_a_party(party: str) -> None:
    with pytest.raises(InvalidInput):
        sip_uri(party, "sip.local")


def test_uri_param_is_appended_and_the_result_checked() -> None:
    assert with_uri_param("sip:a@h;transport=udp", "c2c", "id") == "sip:a@h;transport=udp;c2c=id"
    with pytest.raises(InvalidInput, match="URI headers"):
        with_uri_param("sip:a@h;transport=udp?X=1", "c2c", "id")  # headers never reach the wire (issue 7)


def test_reason_phrases() -> None:
    assert reason_phrase(486) == "Busy Here"
    assert reason_phrase(408) == "Request Timeout"
    assert reason_phrase(499) == "Client Error"  # unnamed code: its class
