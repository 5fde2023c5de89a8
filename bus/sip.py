"""SIP facts adapters share: URI forms and response reason phrases (RFC 3261 §21, RFC 3262+).

Kept in one place so no adapter grows its own copy; number forms per vendor and the Q.850 tables
join it later.
"""

from __future__ import annotations

from bus.errors import InvalidInput

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
    """`1001` → `sip:1001@domain`; `alice@host` → `sip:alice@host`; a sip:/sips: URI is kept."""
    value = party.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    lowered = value.lower()
    if lowered.startswith(("sip:", "sips:")):
        return value
    if ":" in value.split("@", 1)[0] or any(c in value for c in " <>\"'"):
        raise InvalidInput(f"{party!r}: expected an extension, user@host or a sip: URI")
    return f"sip:{value}" if "@" in value else f"sip:{value}@{domain}"


def with_uri_param(uri: str, name: str, value: str) -> str:
    """Add `;name=value` to the URI part (before any `?headers`), as RFC 3261 §19.1.1 places it."""
    base, sep, headers = uri.partition("?")
    return f"{base};{name}={value}{sep}{headers}"
