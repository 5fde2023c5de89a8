"""`test` says whether the SIP port answers, beside the management API check.

A management API can be up while SIP is down (or the other way round), and the SIP banner is where
a mismatch shows: a Kamailio answering on a host registered as Asterisk is worth a warning.
Cloud vendors have no SIP port of the user's to probe.
"""

from __future__ import annotations

from bus.detect import sip_reachability
from bus.vendors import vendor
from workers.adapters.base import Adapter, Answer


def with_sip_reachability(adapter: Adapter, answer: Answer) -> Answer:
    entry = adapter.entry
    if vendor(entry.type).server_class == "cloud" or not entry.host:
        return answer
    sip = sip_reachability(
        entry.host,
        int(adapter.option_float("sip_port")),
        adapter.options.get("sip_transport", "udp"),
        adapter.option_float("sip_timeout"),
    )
    data = {**answer.data, "sip": sip}
    if sip.get("detected") and sip["detected"] != entry.type:
        data["warning"] = f"the SIP port answers as {sip['detected']}, but {adapter.name} is registered as {entry.type}"
    return Answer(f"{answer.message}; {sip['message']}", answer.call_id, data)
