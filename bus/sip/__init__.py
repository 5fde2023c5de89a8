"""SIP facts adapters share, one module per kind of fact, so no adapter grows its own copy:

- `bus.sip.codes`: RFC 3261 reason phrases and the Q.850 ↔ SIP tables (RFC 3398, vendor columns);
- `bus.sip.uri`: building SIP URIs and the one wire grammar every party and call id must pass;
- `bus.sip.numbers`: `tel:`, E.164 and the form each vendor wants (`for_vendor`);
- `bus.sip.message`: parsing SIP responses from the wire (pure, bounded);
- `bus.sip.options`: the OPTIONS probe — the only module here that opens sockets.

The names below are the ones adapters use; they are defined in the modules above (docs/detection.md
"The SIP facts module" describes them).
"""

from __future__ import annotations

from typing import Any

from bus.lazy import lazy_exports

# Loaded on first use (PEP 562): `bus.vendors` needs only bus.sip.uri's SIP_PORT, and `list`/`--help`
# should not compile the number and code tables (tests/test_import_weight.py, bench/startup.py).
_HOMES = {
    **dict.fromkeys(("Q850_NAMES", "Q850_TO_SIP", "REASON_PHRASES", "SIP_TO_Q850", "q850_cause", "q850_to_sip",
                     "reason_phrase", "sip_to_q850"), "bus.sip.codes"),
    **dict.fromkeys(("E164_RE", "TelUri", "for_vendor", "parse_tel", "to_e164", "twilio_endpoint",
                     "vonage_number"), "bus.sip.numbers"),
    **dict.fromkeys(("check_call_id", "check_party", "check_sip_uri", "sip_uri", "with_uri_param"), "bus.sip.uri"),
}  # fmt: skip

__all__ = sorted(_HOMES)
_lazy = lazy_exports(__name__, _HOMES)


def __getattr__(name: str) -> Any:  # a def, so type checkers see the PEP 562 hook
    return _lazy(name)
