"""Adapter lookup by server type, imported lazily so a worker loads only the protocols it serves."""

from __future__ import annotations

import importlib

from bus.errors import InvalidInput
from bus.vendors import vendor
from workers.adapters.base import Adapter

_ADAPTERS = {
    "asterisk": "workers.adapters.asterisk:AsteriskAdapter",
    "freeswitch": "workers.adapters.freeswitch:FreeSwitchAdapter",
    "fusionpbx": "workers.adapters.fusionpbx:FusionPbxAdapter",
    "kamailio": "workers.adapters.kamailio:KamailioAdapter",
    "opensips": "workers.adapters.opensips:OpensipsAdapter",
    "twilio": "workers.adapters.twilio:TwilioAdapter",
    "vonage": "workers.adapters.vonage:VonageAdapter",
}


def adapter_class(type_: str) -> type[Adapter]:
    vendor(type_)
    try:
        module_name, _, attr = _ADAPTERS[type_].partition(":")
    except KeyError:
        raise InvalidInput(
            f"test/call/hangup on {type_} servers are not available in this version "
            f"(add, list and remove are); available: {', '.join(sorted(_ADAPTERS))}"
        ) from None
    return getattr(importlib.import_module(module_name), attr)
