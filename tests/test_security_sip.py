"""Issue 7 item 1: nothing outside the SIP grammar reaches the wire, for any vendor.

The reproductions are the issue's own: a `?X-Injected=` header, two targets in one `to`, a
`?Replaces=` in `from`; each used to come out of bus.sip unchanged and land in Kamailio's REFER
(`Refer-To: <sip:b@h:p;c2c=…?X-Injected=evil>`). The fuzz test drives random from/to/call_id
values through every builder in BUILDERS: adding an adapter's request builder is one line there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import InvalidInput
from bus.sip import check_call_id, check_party, check_sip_uri, for_vendor, sip_uri, with_uri_param

DOMAIN = "sip.local"
VENDORS = ("kamailio", "opensips", "asterisk", "freeswitch", "fusionpbx", "twilio", "vonage")

# Characters that end a URI inside a header, start another target, or are a line protocol's
# delimiter (SIP headers, AMI lines, ESL originate strings, dial strings): never on the wire.
NEVER = frozenset(" \t\r\n\x00\x0b\x0c<>,\"?{}&|$()'^\\`")


@pytest.mark.parametrize(
    "value",
    [
        "sip:b@h:5060?X-Injected=evil",  # issue 7 item 1: a header in Refer-To
        "<sip:b@h:5060>, <sip:m@h:9>",  # two targets in one Refer-To
        "sip:a@h:5060?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2",  # takes over another call
        "sip:b@h;method=BYE",  # RFC 3515: the callee would send a BYE, not an INVITE
        "sip:b@h;transport=udp;TRANSPORT=tcp",
        'sip:"b"@h',
        "sip:b @h",
        "sip:b@h\t",
        "sip:user:password@h",  # a password would be a secret on the wire
        "sip:b@h:0",
        "sip:b@h:70000",
        "sip:b@999.1.1.1",
        "sip:b@h_h",
        "sip:a%0d%0aX:1@h",  # escaped CR/LF
        "sip:a;b@h",
        "sip:a&b@h",
    ],
)
def test_injections_are_refused_for_every_vendor(value: str) -> None:
    for vendor in VENDORS:
        with pytest.raises(InvalidInput):
            for_vendor(value, vendor, role="to", domain=DOMAIN)
    with pytest.raises(InvalidInput):
        sip_uri(value, DOMAIN)


def test_refusals_say_what_is_wrong() -> None:
    with pytest.raises(InvalidInput, match=r"URI headers"):
        check_sip_uri("sip:b@h?X=1", "to")
    with pytest.raises(InvalidInput, match=r"'method' URI parameter"):
        check_sip_uri("sip:b@h;method=BYE", "to")
    with pytest.raises(InvalidInput, match=r"given twice"):  # a forged tracking mark beside the adapter's own
        with_uri_param(sip_uri("sip:b@h;c2c=forged", DOMAIN), "c2c", "0123456789abcdef")
    with pytest.raises(InvalidInput, match=r"bad URI parameter"):
        with_uri_param("sip:b@h", "c2c", "x>y")


@pytest.mark.parametrize(
    "value",
    [
        "sip:alice@example.com",
        "sips:carol@example.com:5061;transport=tls",
        "sip:+14155550100@10.0.0.1;user=phone",
        "sip:bob@[2001:db8::1]:5060;lr",
        "SIP:dave@host",
        "sip:a.b-c_d!~*+%41@host.example.",
    ],
)
def test_the_grammar_keeps_real_uris(value: str) -> None:
    assert check_sip_uri(value) == value
    assert for_vendor(value, "kamailio", domain=DOMAIN) == value


@pytest.mark.parametrize("value", ["Local/1001@default-00000001;1", "CA" + "0" * 32, "a84b4c76e66710@pc33.example.com"])
def test_call_ids_servers_issue_are_kept(value: str) -> None:
    assert check_call_id(value) == value


@pytest.mark.parametrize("value", ["chan-1\r\nAction: Hangup", "a b", "x,y", "{uuid}", "a&b", "<id>", 'a"b', "a?b"])
def test_call_ids_with_delimiters_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        check_call_id(value)


def test_hangup_requests_check_the_call_id() -> None:
    from bus.models import parse_request

    with pytest.raises(ValueError, match="call_id"):
        parse_request({"op": "hangup", "server": "kam", "call_id": "x\r\nAction: Originate"})
    with pytest.raises(ValueError, match="call_id"):
        parse_request({"op": "hangup", "server": "kam", "call_id": "a,b"})


# ---------------------------------------------------------------- fuzz: every builder, random parties

Builder = Callable[[str, str, str], Iterable[str]]


# Each entry: (name, builder(from, to, call_id) -> the party/id strings it puts on the wire). Every adapter
# turns a party into wire form through bus.sip.for_vendor (one line per vendor below); Kamailio adds its
# tracking parameter. The line-protocol builders (AMI, ESL) are fuzzed to the bytes in test_security_wire.py.
def _vendor(vendor: str) -> Builder:
    return lambda f, t, c: (for_vendor(f, vendor, domain=DOMAIN), for_vendor(t, vendor, domain=DOMAIN))


BUILDERS: list[tuple[str, Builder]] = [
    ("sip_uri", lambda f, t, c: (sip_uri(f, DOMAIN), sip_uri(t, DOMAIN))),
    ("kamailio refer", lambda f, t, c: (with_uri_param(sip_uri(t, DOMAIN), "c2c", "0123456789abcdef"),)),
    *((vendor, _vendor(vendor)) for vendor in VENDORS),
    ("call_id", lambda f, t, c: (check_call_id(c),)),
]

_NASTY = "sip:sips:tel:client:sim:<>@;?=,\"' \t\r\n&%0d%0a:[]/+*#.-_()$|{}\\^~!"
_parts = st.one_of(
    st.sampled_from(["sip:", "sips:", "tel:+", "<sip:", "client:", "sim:", "@", ";", "?", "%0d%0a", ">", ",",
                     ";method=BYE", ";c2c=1", "?Replaces=x", "127.0.0.1", "[::1]", ":5060", "1001", "+1 415 555"]),
    st.text(alphabet=_NASTY, max_size=4),
    st.text(max_size=6),
)  # fmt: skip
party = st.lists(_parts, min_size=1, max_size=8).map("".join)


def _assert_on_grammar(sent: str) -> None:
    assert not (set(sent) & NEVER), sent
    assert check_party(sent) == sent  # the one gate accepts its own output unchanged
    if sent.lower().startswith(("sip:", "sips:")):
        assert check_sip_uri(sent) == sent


@pytest.mark.parametrize(("name", "builder"), BUILDERS, ids=[name for name, _ in BUILDERS])
@settings(database=None, max_examples=300, deadline=None)
@given(from_=party, to=party, call_id=party)
def test_fuzz_nothing_outside_the_grammar_reaches_the_wire(name: str, builder: Builder, from_: str, to: str,
                                                           call_id: str) -> None:  # fmt: skip
    try:
        sent = list(builder(from_, to, call_id))
    except InvalidInput:
        return
    for value in sent:
        if name == "call_id":
            assert not (set(value) & NEVER) and check_call_id(value) == value
        else:
            _assert_on_grammar(value)
