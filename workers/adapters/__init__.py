"""Adapter lookup by server type, imported lazily so a worker loads only the protocols it serves.

Every type of the catalogue (bus.vendors) has one; tests/test_cli.py checks that they match.
"""

from __future__ import annotations

import importlib

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
    vendor(type_)  # an unknown type is refused with the list of valid ones
    module_name, _, attr = _ADAPTERS[type_].partition(":")
    return getattr(importlib.import_module(module_name), attr)
