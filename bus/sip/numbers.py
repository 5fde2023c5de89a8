"""Numbers: `tel:` URIs (RFC 3966), E.164 (ITU-T E.164: `+`, country code, at most 15 digits) and the
form each vendor wants (`for_vendor`, which passes everything it returns through the URI grammar).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bus.errors import InvalidInput
from bus.sip.uri import check_party, check_sip_uri, sip_uri
from bus.validate import check_value
from bus.validate import show as _show

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
