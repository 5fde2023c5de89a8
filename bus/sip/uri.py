"""SIP URIs: building them (`sip_uri`, `with_uri_param`) and the one wire grammar every party and
call id must pass before it reaches any protocol line (`check_sip_uri`, `check_party`, `check_call_id`).
"""

from __future__ import annotations

import re

from bus.errors import InvalidInput
from bus.lazy import pattern
from bus.validate import check_value
from bus.validate import show as _show

# RFC 3261 §19.1.2: the port a sip: URI means when it names none (sips: over TLS: 5061).
SIP_PORT = 5060
SIPS_PORT = 5061


def sip_uri(party: str, domain: str) -> str:
    """`1001` → `sip:1001@domain`; `alice@host` → `sip:alice@host`; a sip:/sips: URI is kept.

    One pair of enclosing `<…>` is dropped (people paste name-addr forms); whatever results must
    pass `check_sip_uri`, so nothing outside the grammar is ever returned.
    """
    check_value("party", party)
    value = party.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    lowered = value.lower()
    if lowered.startswith(("sip:", "sips:")):
        return check_sip_uri(value, "party")
    if ":" in value.split("@", 1)[0] or any(c in value for c in " <>\"'"):
        raise InvalidInput(f"{_show(party)}: expected an extension, user@host or a sip: URI")
    return check_sip_uri(f"sip:{value}" if "@" in value else f"sip:{value}@{domain}", "party")


def with_uri_param(uri: str, name: str, value: str) -> str:
    """`uri;name=value`: the result must pass `check_sip_uri`, so a parameter already there (a forged
    `c2c=`), a delimiter in the value, or URI headers in `uri` are refused, never sent."""
    if not _PNAME.fullmatch(name) or not _PVALUE.fullmatch(value):
        raise InvalidInput(f"bad URI parameter {_show(name)}={_show(value)}")
    return check_sip_uri(f"{uri};{name}={value}", "uri")


# ---------------------------------------------------------------- the wire grammar (RFC 3261 §25.1)
#
# Every party a user or another service names ends up inside a protocol line: a Refer-To header
# (Kamailio), a request URI, an AMI `Channel:` line, an ESL originate string. So what may leave
# this module is one strict grammar, checked in one place (`check_sip_uri`, `check_party`), and
# `for_vendor` applies it to whatever it returns, for every vendor.
#
# The grammar is a conservative subset of RFC 3261's SIP-URI: `sip:`/`sips:` user@host[:port]
# and `;name[=value]` parameters. Refused, though some are legal somewhere in RFC 3261:
# - URI headers (`?X-Header=…`): they become headers of the request the callee sends (`?Replaces=`
#   takes over another call); `<`, `>`, `,`, `"` and whitespace: they end a URI inside a header
#   and start another target;
# - a password in the userinfo (RFC 3261 §19.1.1: NOT RECOMMENDED; it would be a secret on the wire);
# - user characters RFC 3261 allows but downstream line protocols treat as delimiters
#   (`& = $ , ; ? / ' ( )`: ESL, AMI dial strings); escaped control bytes (`%00`-`%1F`, `%7F`);
# - the `method` parameter (RFC 3515: in a Refer-To it makes the callee send that method instead of
#   INVITE, e.g. a BYE that ends somebody else's call) and any parameter given twice (RFC 3261
#   §19.1.1: a parameter appears at most once; a second `c2c=` would forge our tracking mark).

_ESCAPED = r"%(?:[2-6][0-9A-Fa-f]|7[0-9A-Ea-e]|[89A-Fa-f][0-9A-Fa-f])"  # %XX, never a control byte
_USER = rf"(?:[A-Za-z0-9\-_.!~*+]|{_ESCAPED})+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"(?:{_LABEL}\.)*[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.?"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6_REF = r"\[[0-9A-Fa-f:.]{2,45}\]"
HOST_RE = pattern(rf"{_HOSTNAME}|{_IPV4}|{_IPV6_REF}")
_PNAME = pattern(r"[A-Za-z0-9\-_.!~*+]{1,32}")
_PVALUE = pattern(rf"(?:[A-Za-z0-9\-_.!~*+\[\]/:]|{_ESCAPED}){{1,128}}")
_SIP_URI = pattern(
    rf"(?P<scheme>sips?):(?:(?P<user>{_USER})@)?(?P<host>{_IPV6_REF}|[^:;]+)"
    rf"(?::(?P<port>[0-9]{{1,5}}))?(?P<params>(?:;[^;]*)*)",
    re.IGNORECASE,
)
FORBIDDEN_PARAMS = frozenset({"method"})
MAX_URI = 256
# A dialable word for a PBX (Asterisk, FreeSWITCH, FusionPBX): an extension, a number, or a
# technology/resource form like `PJSIP/1001`; never a dial-string delimiter (`& , | ( ) { } $ ^ ;`).
DIAL_WORD_RE = pattern(r"[A-Za-z0-9_.+*#/@:-]{1,128}")
# Twilio's non-SIP identities: `client:` names (alphanumerics and `_`, per Twilio), `sim:` SIDs.
TWILIO_IDENTITY_RE = pattern(r"(?:client:[A-Za-z0-9_.-]{1,121}|sim:DE[0-9a-fA-F]{32})")
# A call id as servers hand them out (Twilio CallSid, Kamailio/ESL ids, Asterisk channel names such
# as `Local/1001@default-00000001;1`): RFC 3261 `word [@ word]` minus quotes, brackets and braces.
CALL_ID_RE = pattern(r"[A-Za-z0-9\-_.!%*+~:/@;]{1,256}")


def check_sip_uri(value: str, role: str = "uri") -> str:
    """`value` if it is a SIP URI in the grammar above, else InvalidInput saying what is wrong."""
    check_value(role, value, MAX_URI)
    bad = next((c for c in value if c.isspace() or c in '<>,"?'), None)
    if bad is not None:
        what = "URI headers ('?…')" if bad == "?" else f"{bad!r}"
        raise InvalidInput(
            f"{role}={_show(value)}: {what} not allowed in a SIP URI; expected sip:user@host[:port][;param=value]"
        )
    match = _SIP_URI.fullmatch(value)
    if match is None:
        raise InvalidInput(
            f"{role}={_show(value)}: not a SIP URI this bus sends: expected sip:user@host[:port][;param=value] "
            "(user: letters, digits, - _ . ! ~ * + or %XX; no password, no headers)"
        )
    if "@" in match["host"]:
        raise InvalidInput(
            f"{role}={_show(value)}: bad user part: use letters, digits, - _ . ! ~ * + or %XX (no password)"
        )
    if not HOST_RE.fullmatch(match["host"]):
        raise InvalidInput(f"{role}={_show(value)}: {_show(match['host'])} is not a hostname or IP address")
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        raise InvalidInput(f"{role}={_show(value)}: port {match['port']} is not 1-65535")
    _check_params(value, role, match["params"])
    return value


def _check_params(value: str, role: str, params: str) -> None:
    seen: set[str] = set()
    for param in params.split(";")[1:]:
        name, sep, pvalue = param.partition("=")
        if not _PNAME.fullmatch(name) or (sep and not _PVALUE.fullmatch(pvalue)):
            raise InvalidInput(f"{role}={_show(value)}: bad URI parameter {_show(param)}")
        lowered = name.lower()
        if lowered in FORBIDDEN_PARAMS:
            raise InvalidInput(f"{role}={_show(value)}: the {name!r} URI parameter is not allowed")
        if lowered in seen:
            raise InvalidInput(f"{role}={_show(value)}: URI parameter {name!r} given twice")
        seen.add(lowered)


def is_sip_uri(value: str) -> bool:
    try:
        check_sip_uri(value)
    except InvalidInput:
        return False
    return True


def check_party(value: str, role: str = "party") -> str:
    """The last gate before a party reaches any wire: a SIP URI in the grammar, a Twilio identity, or
    a dialable word (digits, `+`, `*`, `#`, an extension, `PJSIP/1001`). Every vendor form passes here."""
    check_value(role, value)
    if value.lower().startswith(("sip:", "sips:")):
        return check_sip_uri(value, role)
    if TWILIO_IDENTITY_RE.fullmatch(value) or DIAL_WORD_RE.fullmatch(value):
        return value
    raise InvalidInput(
        f"{role}={_show(value)}: expected a number, an extension (letters, digits, + * # . _ - / @ :) "
        "or a SIP URI sip:user@host"
    )


def check_call_id(value: str, role: str = "call_id") -> str:
    """A call id as servers issue them; anything that could end a protocol line or header is refused."""
    check_value(role, value, 256)
    if not CALL_ID_RE.fullmatch(value):
        raise InvalidInput(
            f"{role}={_show(value)}: expected the id `call` printed (letters, digits and - _ . ! % * + ~ : / @ ;)"
        )
    return value
