"""CallRef: what the bus remembers about a call from the moment a server accepted it.

It lives in bus/ (not with the adapters) because the ledger stores it and `hangup` routing reads it
in whichever process gets the hangup job; it is plain JSON so any worker can read it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallRef:
    """A call a server accepted.

    `call_id` is what a user hangs up with (an AMI ChannelId, an ESL uuid, a Twilio sid); it may be
    None until the call connects (Kamailio learns the SIP Call-ID only then), in which case `follow`
    returns it. `handle` holds the vendor's own references (tracking ids, dialog ids, channel names)
    as strings.
    """

    server: str
    call_id: str | None
    handle: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "call_id": self.call_id, "handle": dict(self.handle)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CallRef:
        handle = raw.get("handle") or {}
        call_id = raw.get("call_id")
        return cls(str(raw["server"]), str(call_id) if call_id else None, {str(k): str(v) for k, v in handle.items()})

    @property
    def label(self) -> str:
        """How messages and the ledger name the call: its id, else the vendor's first handle."""
        return self.call_id or next(iter(self.handle.values()), "")

    def names(self) -> list[str]:
        """Every id a user may hang up with: the call id and each handle value."""
        return list(dict.fromkeys(n for n in [self.call_id, *self.handle.values()] if n))
