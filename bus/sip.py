"""SIP facts adapters share, in one place so no adapter grows its own copy.

- URI forms: `sip_uri` (bare extension + realm/domain → `sip:ext@realm`), `with_uri_param`, and the
  one wire grammar every party and call id must pass (`check_sip_uri`, `check_party`, `check_call_id`);
- numbers: `tel:` URIs (RFC 3966), E.164 (ITU-T E.164: `+`, country code, at most 15 digits) and the
  form each vendor wants (`for_vendor`; Twilio's rules in `twilio_endpoint`);
- response codes: RFC 3261 §21 reason phrases, and the Q.850 cause ↔ SIP response tables of
  RFC 3398 §7.2.4.1 / §8.2.6.1 with the FreeSWITCH and Asterisk columns where they differ
  (../shared/vendors.md §8).

docs/detection.md ("The SIP facts module") describes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bus.errors import InvalidInput
from bus.validate import check_value

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_CLASS_PHRASES = {
    1: "Provisional",
    2: "Success",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}


def reason_phrase(code: int) -> str:
    """The RFC phrase, or the class name for codes the RFCs leave unnamed."""
    return REASON_PHRASES.get(code) or _CLASS_PHRASES.get(code // 100, "Unknown")


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
HOST_RE = re.compile(rf"{_HOSTNAME}|{_IPV4}|{_IPV6_REF}")
_PNAME = re.compile(r"[A-Za-z0-9\-_.!~*+]{1,32}")
_PVALUE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*+\[\]/:]|{_ESCAPED}){{1,128}}")
_SIP_URI = re.compile(
    rf"(?P<scheme>sips?):(?:(?P<user>{_USER})@)?(?P<host>{_IPV6_REF}|[^:;]+)"
    rf"(?::(?P<port>[0-9]{{1,5}}))?(?P<params>(?:;[^;]*)*)",
    re.IGNORECASE,
)
FORBIDDEN_PARAMS = frozenset({"method"})
MAX_URI = 256
# A dialable word for a PBX (Asterisk, FreeSWITCH, FusionPBX): an extension, a number, or a
# technology/resource form like `PJSIP/1001`; never a dial-string delimiter (`& , | ( ) { } $ ^ ;`).
DIAL_WORD_RE = re.compile(r"[A-Za-z0-9_.+*#/@:-]{1,128}")
# Twilio's non-SIP identities: `client:` names (alphanumerics and `_`, per Twilio), `sim:` SIDs.
TWILIO_IDENTITY_RE = re.compile(r"(?:client:[A-Za-z0-9_.-]{1,121}|sim:DE[0-9a-fA-F]{32})")
# A call id as servers hand them out (Twilio CallSid, Kamailio/ESL ids, Asterisk channel names such
# as `Local/1001@default-00000001;1`): RFC 3261 `word [@ word]` minus quotes, brackets and braces.
CALL_ID_RE = re.compile(r"[A-Za-z0-9\-_.!%*+~:/@;]{1,256}")


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


# ---------------------------------------------------------------- numbers: tel: and E.164

E164_RE = re.compile(r"\+[1-9][0-9]{1,14}")  # ITU-T E.164: country code never starts with 0, ≤ 15 digits
_SEPARATORS = re.compile(r"[\s().-]")  # visual separators people type (RFC 3966 §5.1.1 allows - . ( ))
_INTERNATIONAL = re.compile(r"00([1-9][0-9]{7,14})")  # ITU international prefix 00 + 8-15 digits
_DIALABLE = re.compile(r"\+?[0-9*#]{1,32}")
_IDENTITY_PREFIXES = ("client:", "sip:", "sips:", "sim:")


@dataclass(frozen=True)
class TelUri:
    """A parsed `tel:` URI (RFC 3966): `number` without visual separators; global numbers keep `+`."""

    number: str
    is_global: bool
    phone_context: str | None = None
    extension: str | None = None


def parse_tel(value: str) -> TelUri:
    """`tel:+1-212-555-0100;ext=12` → TelUri('+12125550100', True, None, '12'). InvalidInput otherwise.

    A local number needs `;phone-context=` (RFC 3966 §5.1.5); it is kept as given, digits only.
    """
    check_value("tel URI", value)
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text.lower().startswith("tel:"):
        raise InvalidInput(f"{_show(value)}: expected a tel: URI")
    number, *params = text[4:].split(";")
    found: dict[str, str] = {}
    for param in params:
        key, _, val = param.partition("=")
        found[key.strip().lower()] = val.strip()
    compact = _SEPARATORS.sub("", number)
    if compact.startswith("+"):
        if not E164_RE.fullmatch(compact):
            raise InvalidInput(f"{_show(value)}: a global tel: number must be E.164 (+ country code, ≤ 15 digits)")
        return TelUri(compact, True, None, found.get("ext"))
    if not _DIALABLE.fullmatch(compact):
        raise InvalidInput(f"{_show(value)}: expected digits in the tel: URI")
    context = found.get("phone-context")
    if not context:
        raise InvalidInput(f"{_show(value)}: a local tel: number needs ;phone-context= (RFC 3966 §5.1.5)")
    return TelUri(compact, False, context, found.get("ext"))


def to_e164(value: str) -> str | None:
    """The E.164 form (`+…`) when the input clearly is one, else None (never a guessed country code).

    Accepts `+…` with visual separators, `00…` (international prefix), and global `tel:` URIs. Bare
    national digits are not clearly E.164 (11 digits may be `1 415…` or a Chinese mobile `138…`).
    """
    text = value.strip()
    if text.lower().startswith(("tel:", "<tel:")):
        try:
            tel = parse_tel(text)
        except InvalidInput:
            return None
        return tel.number if tel.is_global else None
    compact = _SEPARATORS.sub("", text)
    if E164_RE.fullmatch(compact):
        return compact
    international = _INTERNATIONAL.fullmatch(compact)
    return "+" + international.group(1) if international else None


def twilio_endpoint(value: str, role: str) -> str:
    """A `to`/`from` word in a form Twilio accepts, changed as little as possible.

    - `client:…`, `sip:…`, `sim:…` identities pass unchanged.
    - `+` numbers lose visual separators (spaces, dots, dashes, parentheses) and must then be E.164:
      `+`, a country code not starting with 0, at most 15 digits; otherwise InvalidInput.
    - `00` followed by 8–15 digits (the ITU international prefix) becomes `+…`: clearly E.164.
    - a global `tel:` URI becomes its E.164 number.
    - Everything else dialable (`check_party`: bare digits, short codes) passes unchanged and Twilio
      decides: a bare digit string is not clearly E.164 (11 digits may be `1 415…` or a Chinese
      mobile `138…`), so no `+` is guessed; Twilio refuses what it cannot read with 21211/21217 (→ SIP 484).
    """
    check_value(role, value)
    lowered = value.lower()
    if lowered.startswith(("sip:", "sips:")):
        return check_sip_uri(value, role)
    if lowered.startswith(_IDENTITY_PREFIXES):
        return check_party(value, role)
    if lowered.startswith("tel:"):
        return parse_tel(value).number if to_e164(value) else value
    compact = _SEPARATORS.sub("", value)
    if compact.startswith("+"):
        if not E164_RE.fullmatch(compact):
            raise InvalidInput(
                f"{role}={_show(value)}: not an E.164 number; expected + then country code and number, "
                "at most 15 digits (e.g. +14155550100), or client:name / sip:user@host"
            )
        return compact
    international = _INTERNATIONAL.fullmatch(compact)
    if international:
        return "+" + international.group(1)
    return check_party(value, role)


def vonage_number(value: str, role: str) -> str:
    """Vonage Voice API `phone` endpoints take E.164 digits without `+` (`14155550100`).

    `+1 415 555 0100`, `0014155550100` and `tel:+14155550100` all become `14155550100`; bare digits
    pass after dropping separators; a `sip:` URI passes unchanged (Vonage's `sip` endpoint type).
    """
    check_value(role, value)
    if value.lower().startswith(("sip:", "sips:")):
        return check_sip_uri(value, role)
    e164 = to_e164(value)
    if e164:
        return e164[1:]
    compact = _SEPARATORS.sub("", value)
    if compact.startswith("+") or not re.fullmatch(r"[0-9]{2,15}", compact):
        raise InvalidInput(
            f"{role}={_show(value)}: Vonage needs a phone number in E.164 form, digits only "
            "(e.g. 14155550100), or a sip: URI"
        )
    return compact


def dial_string(value: str, role: str) -> str:
    """What a PBX dialplan gets (Asterisk, FreeSWITCH, FusionPBX): an extension or number as typed,
    visual separators dropped when it is a phone number; `tel:` becomes its number; `+` is kept
    (the PBX's dialplan decides); SIP URIs must pass the grammar, other words must be dialable
    (`check_party`): a dial-string delimiter never reaches AMI or ESL."""
    check_value(role, value)
    if value.lower().startswith(("tel:", "<tel:")):
        return parse_tel(value).number
    compact = _SEPARATORS.sub("", value)
    return compact if _DIALABLE.fullmatch(compact) else check_party(value, role)


def for_vendor(value: str, vendor: str, *, role: str = "number", domain: str | None = None) -> str:
    """A party (`from`/`to` word) in the form a server type wants.

    | vendor                          | form                                                        |
    |---------------------------------|-------------------------------------------------------------|
    | twilio                          | E.164 with `+` (`twilio_endpoint`)                          |
    | vonage                          | E.164 digits, no `+` (`vonage_number`)                      |
    | kamailio, opensips              | a SIP URI: `sip_uri(…, domain)`; `tel:+1…` → `sip:+1…@domain;user=phone` |
    | asterisk, freeswitch, fusionpbx | a dialable extension/number (`dial_string`)                 |
    """
    return check_party(_vendor_form(value, vendor, role, domain), role)  # the one gate, whatever the vendor


def _vendor_form(value: str, vendor: str, role: str, domain: str | None) -> str:
    if vendor == "twilio":
        return twilio_endpoint(value, role)
    if vendor == "vonage":
        return vonage_number(value, role)
    if vendor in ("kamailio", "opensips"):
        if not domain:
            raise InvalidInput(f"{role}: a SIP URI needs a domain or realm for {_show(value)}")
        check_value(role, value)
        if value.strip().lower().startswith(("tel:", "<tel:")):
            # RFC 3261 §19.1.6: a telephone number as a SIP URI user part carries user=phone.
            return check_sip_uri(f"sip:{parse_tel(value).number}@{domain};user=phone", role)
        return sip_uri(value, domain)
    if vendor in ("asterisk", "freeswitch", "fusionpbx"):
        return dial_string(value, role)
    raise InvalidInput(f"no number form known for server type {vendor!r}")


def _show(value: str, limit: int = 40) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]", "?", value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


# ---------------------------------------------------------------- Q.850 cause ↔ SIP response
#
# Sources: RFC 3398 §7.2.4.1 (ISUP cause → SIP) and §8.2.6.1 (SIP → ISUP cause), as tabled and
# cross-checked in ../shared/vendors.md §8 (FreeSWITCH `hangup_cause_to_sip()` in mod_sofia.c and
# `sofia_glue_sip_cause_to_freeswitch()` in sofia_glue.c; Asterisk chan_pjsip `hangup_cause2sip()`
# and res_pjsip `ast_sip_hangup_sip2cause()`). The §8.2.6.1 text ("unlisted → 31", "BYE/CANCEL → 16",
# 487 unmapped, 488/606 "by Warning header") was re-checked against a copy of the RFC page 45.

Q850_NAMES: dict[int, str] = {  # FreeSWITCH's enum names (switch_types.h), which follow Q.850
    1: "UNALLOCATED_NUMBER",
    2: "NO_ROUTE_TRANSIT_NET",
    3: "NO_ROUTE_DESTINATION",
    16: "NORMAL_CLEARING",
    17: "USER_BUSY",
    18: "NO_USER_RESPONSE",
    19: "NO_ANSWER",
    20: "SUBSCRIBER_ABSENT",
    21: "CALL_REJECTED",
    22: "NUMBER_CHANGED",
    23: "REDIRECTION_TO_NEW_DESTINATION",
    25: "EXCHANGE_ROUTING_ERROR",
    26: "NON_SELECTED_USER_CLEARING",
    27: "DESTINATION_OUT_OF_ORDER",
    28: "INVALID_NUMBER_FORMAT",
    29: "FACILITY_REJECTED",
    31: "NORMAL_UNSPECIFIED",
    34: "NORMAL_CIRCUIT_CONGESTION",
    38: "NETWORK_OUT_OF_ORDER",
    41: "NORMAL_TEMPORARY_FAILURE",
    42: "SWITCH_CONGESTION",
    44: "REQUESTED_CHAN_UNAVAIL",
    47: "RESOURCE_UNAVAILABLE",
    52: "OUTGOING_CALL_BARRED",
    54: "INCOMING_CALL_BARRED",
    55: "INCOMING_CALL_BARRED_WITHIN_CUG",
    57: "BEARERCAPABILITY_NOTAUTH",
    58: "BEARERCAPABILITY_NOTAVAIL",
    63: "SERVICE_UNAVAILABLE",
    65: "BEARERCAPABILITY_NOTIMPL",
    66: "CHAN_NOT_IMPLEMENTED",
    69: "FACILITY_NOT_IMPLEMENTED",
    70: "ONLY_RESTRICTED_DIGITAL",
    79: "SERVICE_NOT_IMPLEMENTED",
    87: "USER_NOT_MEMBER_OF_CUG",
    88: "INCOMPATIBLE_DESTINATION",
    102: "RECOVERY_ON_TIMER_EXPIRE",
    111: "PROTOCOL_ERROR",
    127: "INTERWORKING",
}

# RFC 3398 §7.2.4.1. Cause 16 (normal clearing) is a BYE/CANCEL, not a response: absent on purpose.
# 29 → 501: the RFC prints "510 Not implemented", evidently a typo; implementations use 501.
Q850_TO_SIP: dict[int, int] = {
    1: 404, 2: 404, 3: 404,
    17: 486, 18: 408, 19: 480, 20: 480,
    21: 403,  # RFC note (+): a 6xx (603) may be used when the cause location is "user"
    22: 410,  # 301 when a diagnostic carries the new number
    23: 410, 26: 404, 27: 502, 28: 484, 29: 501, 31: 480,
    34: 503, 38: 503, 41: 503, 42: 503, 47: 503,
    55: 403, 57: 403, 58: 503, 65: 488, 70: 488, 79: 501, 87: 403, 88: 503,
    102: 504, 111: 500, 127: 500,
}  # fmt: skip

# The vendors' own tables, only where they differ from RFC 3398 (vendors.md §8.1).
Q850_TO_SIP_VENDOR: dict[str, dict[int, int]] = {
    # mod_sofia.c hangup_cause_to_sip(); its default branch answers 480.
    "freeswitch": {
        16: 480, 21: 603, 25: 483, 44: 503, 52: 403, 54: 403, 66: 480, 69: 501, 88: 488,
        111: 480, 127: 480,
        487: 487,  # ORIGINATOR_CANCEL (FreeSWITCH-only cause)
        # FreeSWITCH-only 8xx causes
        808: 484, 809: 503, 810: 484, 811: 502, 815: 600, 816: 603, 817: 604, 818: 606,
        819: 607, 820: 428, 821: 429, 822: 437, 823: 438, 824: 403,
    },
    # chan_pjsip.c hangup_cause2sip(); unmapped causes end as 603 (ast_sip_session_terminate).
    "asterisk": {
        16: 603, 23: 302, 25: 603, 38: 500, 41: 603, 44: 603, 52: 603, 54: 603, 57: 603,
        58: 488, 65: 603, 66: 503, 69: 603, 79: 603, 88: 603, 102: 603, 111: 603,
    },
}  # fmt: skip
Q850_TO_SIP_VENDOR["fusionpbx"] = Q850_TO_SIP_VENDOR["freeswitch"]  # FusionPBX is FreeSWITCH
_Q850_DEFAULT_VENDOR = {"freeswitch": 480, "fusionpbx": 480, "asterisk": 603}

# RFC 3398 §8.2.6.1. 487 has no mapping (a CANCEL ≈ 16), and 488/606 map "by Warning header": absent.
SIP_TO_Q850: dict[int, int] = {
    400: 41, 401: 21, 402: 21, 403: 21, 404: 1, 405: 63, 406: 79, 407: 21, 408: 102, 410: 22,
    413: 127, 414: 127, 415: 79, 416: 127, 420: 127, 421: 127, 423: 127,
    480: 18, 481: 41, 482: 25, 483: 25, 484: 28, 485: 1, 486: 17,
    500: 41, 501: 79, 502: 38, 503: 41, 504: 102, 505: 127, 513: 127,
    600: 17, 603: 21, 604: 1,
}  # fmt: skip
SIP_TO_Q850_UNLISTED = 31  # RFC 3398 §8.2.6.1: "Any SIP status codes not listed … 31 Normal, unspecified"

SIP_TO_Q850_VENDOR: dict[str, dict[int, int]] = {
    # sofia_glue.c sofia_glue_sip_cause_to_freeswitch(); 487 → FreeSWITCH's ORIGINATOR_CANCEL (487)
    "freeswitch": {485: 3, 487: 487, 488: 88, 604: 3, 606: 88, 607: 819, 608: 21},
    # res_pjsip.c ast_sip_hangup_sip2cause(); unlisted: 4xx → 127, 5xx → 34, 6xx → 127
    "asterisk": {
        400: 127, 402: 127, 405: 127, 406: 127, 408: 18, 415: 127, 416: 127, 420: 3,
        421: 127, 423: 127, 480: 19, 481: 127, 482: 127, 483: 19, 487: 127, 488: 58,
        500: 38, 501: 29, 502: 27, 503: 34, 513: 34, 606: 58,
    },
}  # fmt: skip
SIP_TO_Q850_VENDOR["fusionpbx"] = SIP_TO_Q850_VENDOR["freeswitch"]


def q850_to_sip(cause: int, vendor: str | None = None) -> int | None:
    """The SIP final response for a Q.850 cause: the vendor's column when it differs, else RFC 3398.

    None for 16 (normal clearing) under RFC 3398: that is a BYE/CANCEL, not a rejection. A cause
    neither table lists gets the vendor's default (FreeSWITCH 480, Asterisk 603) or, for RFC 3398,
    this project's choice by Q.850 class (RFC 3398 lists no default): normal event (0-31) → 480,
    resource unavailable (32-47) → 503, service unavailable (48-63) → 503, not implemented (64-79)
    → 501, invalid message / protocol error / interworking (80-127) → 500.
    """
    column = Q850_TO_SIP_VENDOR.get(vendor or "", {})
    if cause in column:
        return column[cause]
    if cause in Q850_TO_SIP:
        return Q850_TO_SIP[cause]
    if vendor in _Q850_DEFAULT_VENDOR:
        return _Q850_DEFAULT_VENDOR[vendor]
    if cause == 16:
        return None
    if cause < 32:
        return 480
    if cause < 64:
        return 503
    if cause < 80:
        return 501
    return 500


# FreeSWITCH's own cause names beyond Q.850 (src/include/switch_types.h, switch_call_cause_t), which
# `-ERR <CAUSE>` and Hangup-Cause carry by name; with Q850_NAMES they map a name back to its number.
FREESWITCH_CAUSE_NAMES: dict[int, str] = {
    487: "ORIGINATOR_CANCEL", 700: "CRASH", 701: "SYSTEM_SHUTDOWN", 702: "LOSE_RACE", 703: "MANAGER_REQUEST",
    800: "BLIND_TRANSFER", 801: "ATTENDED_TRANSFER", 802: "ALLOTTED_TIMEOUT", 803: "USER_CHALLENGE",
    804: "MEDIA_TIMEOUT", 805: "PICKED_OFF", 806: "USER_NOT_REGISTERED", 807: "PROGRESS_TIMEOUT",
    808: "INVALID_GATEWAY", 809: "GATEWAY_DOWN", 810: "INVALID_URL", 811: "INVALID_PROFILE", 812: "NO_PICKUP",
    813: "SRTP_READ_ERROR", 814: "BOWOUT", 815: "BUSY_EVERYWHERE", 816: "DECLINE", 817: "DOES_NOT_EXIST_ANYWHERE",
    818: "NOT_ACCEPTABLE", 819: "UNWANTED", 820: "NO_IDENTITY", 821: "BAD_IDENTITY_INFO",
    822: "UNSUPPORTED_CERTIFICATE", 823: "INVALID_IDENTITY", 824: "STALE_DATE", 825: "REJECT_ALL",
}  # fmt: skip
_CAUSE_NUMBERS = {name: number for number, name in (*Q850_NAMES.items(), *FREESWITCH_CAUSE_NAMES.items())}


def q850_cause(name: str) -> int | None:
    """The cause number for a FreeSWITCH hangup-cause name (`USER_BUSY` → 17), None if unknown."""
    return _CAUSE_NUMBERS.get(name.strip().upper())


def sip_to_q850(code: int, vendor: str | None = None) -> int:
    """The Q.850 cause for a SIP final response: the vendor's column when it differs, else RFC 3398.

    487 (no RFC mapping) → 16 (a CANCEL is normal clearing, §8.2.6.1); 488/606 without a Warning
    header to read → 31 (unlisted). Asterisk's own defaults apply to its unlisted codes.
    """
    column = SIP_TO_Q850_VENDOR.get(vendor or "", {})
    if code in column:
        return column[code]
    if code in SIP_TO_Q850:
        return SIP_TO_Q850[code]
    if vendor == "asterisk":
        return {4: 127, 5: 34, 6: 127}.get(code // 100, 16)
    if code == 487:
        return 16
    return SIP_TO_Q850_UNLISTED
