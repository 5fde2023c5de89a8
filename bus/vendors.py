"""The catalogue of server types: what each one needs and its class defaults.

Plain data, so `list` and `add` can use it without importing any protocol code. Each entry is
the "auto-optimal configuration per server class" of docs/architecture.md: a user overrides any of the
`defaults` per server with `add … --opt key=value`, and `list --json` shows the effective values.
Facts and sources: docs/reference/vendors.md §0 and §11.
"""

# No `from __future__ import annotations`: typing.NamedTuple would turn each string annotation into
# a ForwardRef, and the first one costs ~1.5 ms of every `ifbus list sip`.
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from bus.secrets import is_secret_key
from bus.sip.uri import SIP_PORT

ESL_PORT = 8021  # mod_event_socket's default: FreeSWITCH, and the FreeSWITCH under FusionPBX

# Timeouts in seconds; `attempts` is the per-server attempt budget for transient failures;
# `breaker_threshold` failed attempts in a row open a server's breaker for `breaker_cooldown` s.
# A LAN server that refuses is down (fail over fast, look again soon); a cloud API mostly sheds load
# for a while (more patience per attempt, longer cool-down).
_LAN = {
    "connect_timeout": "2",
    "read_timeout": "5",
    "attempts": "3",
    "breaker_threshold": "3",
    "breaker_cooldown": "5",
    # `test` also sends one SIP OPTIONS here (the management port is not the SIP port).
    "sip_port": str(SIP_PORT),
    "sip_transport": "udp",
    "sip_timeout": "1",
    # Call-rate limits (bus/ratelimit.py; 0 = none). Generous: stock FreeSWITCH admits 30 sessions/s
    # (switch.conf.xml sessions-per-second) and a click-to-call opens two legs, so 10 calls/s leaves the
    # PBX headroom for its own traffic; concurrency is the PBX's business.
    "cps": "10",
    "max_concurrent": "0",
}
_CLOUD = {
    "connect_timeout": "5",
    "read_timeout": "15",
    "attempts": "4",
    "breaker_threshold": "4",
    "breaker_cooldown": "15",
    # The lowest call-create rate a cloud vendor documents as its default (Twilio's 1 CPS, vendors.md §10);
    # a vendor entry states its own where it differs.
    "cps": "1",
    "max_concurrent": "0",
}


class Vendor(NamedTuple):
    """One type's catalogue entry. A NamedTuple (immutable, as the catalogue is) rather than a
    dataclass: `dataclasses` imports `inspect`, ~10 ms of every `ifbus list sip` (bench/startup.py)."""

    type: str
    label: str
    server_class: str  # "pbx" (on-LAN PBX), "proxy" (SIP proxy), "cloud" (cloud API)
    auth_keys: tuple[str, ...]  # keys the spec's examples use; others are accepted with a warning
    secret_keys: tuple[str, ...]  # masked wherever shown
    port: int | None  # management API port; None for cloud vendors
    base_url: str | None = None  # cloud vendors' public API
    extra_options: Mapping[str, str] = MappingProxyType({})

    @property
    def defaults(self) -> dict[str, str]:
        base = dict(_CLOUD if self.server_class == "cloud" else _LAN)
        if self.base_url:
            base["base_url"] = self.base_url
        base.update(self.extra_options)
        return base


VENDORS: Mapping[str, Vendor] = MappingProxyType(
    {
        v.type: v
        for v in (
            Vendor(
                "asterisk",
                "Asterisk (AMI)",
                "pbx",
                ("user", "secret"),
                ("secret",),
                5038,
                # answer_timeout 30 s is Originate's own default; from-internal is FreePBX's context.
                extra_options={
                    "channel_tech": "PJSIP",
                    "context": "from-internal",
                    "answer_timeout": "30",
                    "caller_id_name": "Click2Call",
                },
            ),
            Vendor(
                "freeswitch",
                "FreeSWITCH (ESL)",
                "pbx",
                ("apikey", "domain"),
                ("apikey",),
                ESL_PORT,
                # FreeSWITCH's own originate default is 60 s; profile/context are the vanilla config's names.
                extra_options={"profile": "internal", "context": "default", "originate_timeout": "60"},
            ),
            Vendor(
                "kamailio",
                "Kamailio (JSON-RPC)",
                "proxy",
                ("token", "realm"),
                ("token",),
                SIP_PORT,  # jsonrpcs over xhttp answers on Kamailio's own SIP TCP listener
                extra_options={"path": "/RPC", "scheme": "http", "fr_timer": "5", "fr_inv_timer": "30"},
            ),
            Vendor(
                "opensips",
                "OpenSIPS (mi_http)",
                "proxy",
                ("user", "secret", "domain"),
                ("secret",),
                8888,
                # fr_timer mirrors tm's fr_timeout in deploy/opensips/opensips.cfg; poll_interval paces cache_fetch.
                extra_options={"path": "/mi", "scheme": "http", "fr_timer": "5", "poll_interval": "0.05"},
            ),
            Vendor(
                "twilio",
                "Twilio (REST 2010-04-01)",
                "cloud",
                ("account_sid", "auth_token"),
                ("auth_token",),
                None,
                base_url="https://api.twilio.com",
                # cps: "By default, each account is granted one CPS for calls created via POST … /Calls"
                # (twilio.com/docs/voice/api/call; vendors.md §5.3).
                extra_options={"answer_timeout": "60", "poll_interval": "1", "cps": "1"},
            ),
            Vendor(
                "vonage",
                "Vonage (Voice API)",
                "cloud",
                ("api_key", "api_secret"),
                ("api_secret", "private_key"),
                None,
                base_url="https://api.nexmo.com",
                extra_options={
                    "rest_base_url": "https://rest.nexmo.com",
                    "answer_timeout": "60",
                    "poll_interval": "1",
                    "jwt_lifetime": "300",
                },
            ),
            Vendor(
                "fusionpbx",
                "FusionPBX (web + ESL)",
                "pbx",
                ("username", "password", "domain"),
                ("password", "key", "esl_password"),
                443,
                # click_to_call.php's blocking originate has no timeout of its own: FreeSWITCH's 60 s.
                extra_options={"scheme": "https", "esl_port": str(ESL_PORT), "originate_timeout": "60"},
            ),
        )
    }
)

TYPES: tuple[str, ...] = tuple(VENDORS)

# The credentials each type cannot work without: alternatives, one of which must be complete. `add`
# refuses an entry that has none (it would join its failover pool and fail every call there).
REQUIRED_AUTH: Mapping[str, tuple[tuple[str, ...], ...]] = MappingProxyType(
    {
        "asterisk": (("user", "secret"),),  # AMI Login
        "freeswitch": (("apikey",),),  # ESL `auth <password>`
        "kamailio": (("token",),),  # the Bearer token deploy/kamailio checks
        "opensips": ((),),  # mi_http has no auth of its own (user/secret: HTTP Basic when given)
        "twilio": (("account_sid", "auth_token"),),
        "vonage": (("api_key", "api_secret"), ("application_id", "private_key")),
        "fusionpbx": (("username", "password"),),  # the web login
    }
)


def vendor(type_: str) -> Vendor:
    """The catalogue entry; unknown types are refused with the list of valid ones."""
    from bus.errors import InvalidInput

    try:
        return VENDORS[type_]
    except KeyError:
        raise InvalidInput(f"Unknown server type {type_!r}: valid types are {', '.join(TYPES)}") from None


def is_secret(type_: str, key: str) -> bool:
    """The catalogue's secret keys for this type, or any key bus.secrets calls secret by its name."""
    entry = VENDORS.get(type_)
    return (entry is not None and key in entry.secret_keys) or is_secret_key(key)


def missing_auth(type_: str, auth: Mapping[str, str]) -> str | None:
    """None when `auth` completes one of the type's REQUIRED_AUTH alternatives, else what to add."""
    options = REQUIRED_AUTH.get(type_, ((),))
    if any(all(auth.get(key) for key in keys) for keys in options):
        return None
    return " or ".join(" ".join(f"{key}=…" for key in keys) for keys in options)
