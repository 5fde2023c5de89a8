"""SIP response codes: RFC 3261 §21 reason phrases, and the Q.850 cause ↔ SIP response tables of
RFC 3398 §7.2.4.1 / §8.2.6.1 with the FreeSWITCH and Asterisk columns where they differ
(docs/reference/vendors.md §8). Every adapter that turns a vendor's cause into a SIP code reads them here.
"""

from __future__ import annotations

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


# ---------------------------------------------------------------- Q.850 cause ↔ SIP response
#
# Sources: RFC 3398 §7.2.4.1 (ISUP cause → SIP) and §8.2.6.1 (SIP → ISUP cause), as tabled and
# cross-checked in docs/reference/vendors.md §8 (FreeSWITCH `hangup_cause_to_sip()` in mod_sofia.c and
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
