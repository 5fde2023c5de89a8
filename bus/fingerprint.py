"""Server-type fingerprints: evidence strings → a Detection (type, version, confidence, evidence).

Pure rules, no I/O: every rule is unit-tested on the real strings. bus.detect gathers the evidence
over the network and calls `classify`. Rules and sources: docs/reference/vendors.md §9 (cheat sheet) and
§1.5, §2.5, §3.4, §4.4, §5.4, §6.5, §7.4; real captures in tests/peers/captures/. Every banner can be
changed by an admin, and a proxy in front of a PBX answers SIP for it, so detections from different
servers are reported as ambiguous, never resolved silently. docs/detection.md has the tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CONFIDENCE_ORDER = {"none": 0, "low": 1, "medium": 2, "high": 3}

# Where a piece of evidence came from → how it is shown, and which probe it belongs to (agreement
# between different probes raises confidence; UDP and TCP answers of one SIP stack do not).
SOURCES: dict[str, tuple[str, str]] = {
    "sip-server": ("SIP Server", "sip"),
    "sip-user-agent": ("SIP User-Agent", "sip"),
    "ami-banner": ("AMI banner", "ami"),
    "esl-banner": ("ESL banner", "esl"),
    "tcp-banner": ("TCP banner", "tcp"),
    "http-server": ("HTTP Server", "http"),
    "jsonrpc": ("JSON-RPC answer", "rpc"),
    "host": ("host", "host"),
}
MANAGEMENT_KINDS = frozenset({"ami", "esl", "rpc"})  # vendors.md §9: prefer these over a SIP banner

# AMI greeting version (major) → Asterisk major (include/asterisk/manager.h per branch, vendors.md §1.2).
AMI_TO_ASTERISK = {5: "16", 7: "18", 9: "20", 10: "21", 11: "22", 12: "23"}

CLOUD_HOSTS = {
    "api.twilio.com": "twilio",
    "api.nexmo.com": "vonage",
    "rest.nexmo.com": "vonage",
}
CLOUD_DOMAINS = {"twilio.com": "twilio", "nexmo.com": "vonage"}


@dataclass(frozen=True)
class Evidence:
    source: str  # a key of SOURCES
    value: str
    where: str = ""  # e.g. "udp 127.0.0.1:5060, 200 OK"

    @property
    def kind(self) -> str:
        return SOURCES.get(self.source, (self.source, self.source))[1]

    def describe(self) -> str:
        label = SOURCES.get(self.source, (self.source, ""))[0]
        return f"{label} {self.value!r}" + (f" ({self.where})" if self.where else "")


@dataclass(frozen=True)
class Candidate:
    type: str
    label: str  # product and version as a person would say it, e.g. "Asterisk PBX 20.5.0"
    version: str | None
    confidence: str
    evidence: tuple[Evidence, ...]
    specificity: int = 1  # a more specific product (FreePBX over Asterisk) names the result

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "label": self.label,
            "version": self.version,
            "confidence": self.confidence,
            "evidence": [e.describe() for e in self.evidence],
        }


@dataclass(frozen=True)
class Detection:
    type: str | None  # None when nothing was recognised, or when ambiguous (see candidates)
    version: str | None
    confidence: str  # high | medium | low | none
    label: str | None
    evidence: tuple[Evidence, ...] = ()  # everything seen, recognised or not
    ambiguous: bool = False
    candidates: tuple[Candidate, ...] = ()  # best first
    tried: tuple[str, ...] = ()  # one line per probe made
    notes: tuple[str, ...] = ()

    @property
    def answered(self) -> bool:
        return bool(self.evidence)

    def summary(self) -> str:
        if self.ambiguous:
            return "Ambiguous: " + "; ".join(f"{c.type} ({c.label}, {c.confidence})" for c in self.candidates)
        if self.type is None:
            return "Not detected"
        used = self.candidates[0].evidence if self.candidates else self.evidence
        return f"Detected: {self.label} ({self.confidence}, evidence: {'; '.join(e.describe() for e in used)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "version": self.version,
            "confidence": self.confidence,
            "label": self.label,
            "ambiguous": self.ambiguous,
            "candidates": [c.to_dict() for c in self.candidates],
            "evidence": [e.describe() for e in self.evidence],
            "tried": list(self.tried),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------- fingerprints (one string → a candidate)

_VERSION = r"(?P<v>\d+(?:\.\d+)+)"
_SIP_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, str, str | None, str, int]]]] = [
    # FreePBX-built Asterisk: `FPBX-16.0.40(18.20.0)` (vendors.md §1.5, pyVoIP issue #270 log)
    (
        re.compile(r"FPBX-(?P<p>\d[\d.]*)\((?P<v>\d[\w.-]*)\)"),
        lambda m: ("asterisk", f"FreePBX {m['p']} (Asterisk {m['v']})", m["v"], "high", 3),
    ),
    # chan_pjsip / chan_sip default `Asterisk PBX <version>`; a bare prefix is seen too (§1.5)
    (
        re.compile(r"Asterisk PBX(?:[ \t]+(?P<v>\d+(?:\.\d+)+)\S*)?(?:\s.*)?", re.IGNORECASE),
        lambda m: (
            "asterisk",
            f"Asterisk PBX {m['v']}" if m["v"] else "Asterisk PBX",
            m["v"],
            "high" if m["v"] else "medium",
            2,
        ),
    ),
    # sofia-sip default `FreeSWITCH-mod_sofia/1.10.12-release~64bit`, in User-Agent even on responses (§2.5)
    (
        re.compile(r"FreeSWITCH-mod_sofia/" + _VERSION + r"\S*", re.IGNORECASE),
        lambda m: ("freeswitch", f"FreeSWITCH {m['v']}", m["v"], "high", 2),
    ),
    # exactly `FreeSWITCH`: FusionPBX's default sip_profiles (§2.5, §9: "likely FusionPBX")
    (
        re.compile(r"FreeSWITCH"),
        lambda m: ("fusionpbx", "FusionPBX (FreeSWITCH, likely)", None, "low", 3),
    ),
    # `kamailio (5.6.3 (x86_64/linux))`, old `Kamailio (1.5.3-notls (i386/linux))` (§3.4)
    (
        re.compile(r"kamailio \(" + _VERSION + r"[^\s(]* \([^)]*\)\)\s*", re.IGNORECASE),
        lambda m: ("kamailio", f"Kamailio {m['v']}", m["v"], "high", 2),
    ),
    # `OpenSIPS (3.4.18 (x86_64/linux))` (§4.4, transcripts/opensips-3.4.18/options_opensips.txt)
    (
        re.compile(r"OpenSIPS \(" + _VERSION + r"[^\s(]* \([^)]*\)\)\s*", re.IGNORECASE),
        lambda m: ("opensips", f"OpenSIPS {m['v']}", m["v"], "high", 2),
    ),
    # `User-Agent: Twilio Gateway` (Twilio-originated SIP), `Server: Twilio` (Voice SDK edge) (§5.4, 3p)
    (
        re.compile(r"Twilio(?: Gateway)?"),
        lambda m: ("twilio", "Twilio", None, "medium", 2),
    ),
]

_AMI = re.compile(r"Asterisk Call Manager/(?P<major>\d+)\.(?P<minor>\d+)(?:\.\d+)?")
_ESL = re.compile(r"Content-Type:\s*(auth/request|text/rude-rejection)", re.IGNORECASE)
_HTTP_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, str, str | None, str, int]]]] = [
    # main/http.c default `Asterisk/<version>`; the sample http.conf sets `servername=Asterisk` (§1.5)
    (
        re.compile(r"Asterisk(?:/" + _VERSION + r"\S*)?"),
        lambda m: (
            "asterisk",
            f"Asterisk {m['v']}" if m["v"] else "Asterisk (HTTP)",
            m["v"],
            "high" if m["v"] else "medium",
            1,
        ),
    ),
    # mod_xml_rpc `FreeSWITCH-<ver>-mod_xml_rpc` (§2.5)
    (
        re.compile(r"FreeSWITCH-" + _VERSION + r"\S*-mod_xml_rpc"),
        lambda m: ("freeswitch", f"FreeSWITCH {m['v']}", m["v"], "high", 1),
    ),
]
_KAMAILIO_RPC = re.compile(r"kamailio " + _VERSION, re.IGNORECASE)  # core.version result (kamailio-lab.md §5b)


def fingerprint(evidence: Evidence) -> Candidate | None:
    """What one piece of evidence says, or None when it names no known server type."""
    value = evidence.value.strip()
    found: tuple[str, str, str | None, str, int] | None = None
    if evidence.source in ("sip-server", "sip-user-agent"):
        found = _first(_SIP_RULES, value)
    elif evidence.source == "http-server":
        found = _first(_HTTP_RULES, value)
        if found is None:
            sip = _first(_SIP_RULES, value)  # kamailio xhttp answers with its SIP Server header (§3.4)
            found = sip if sip and sip[0] in ("kamailio", "opensips") else None
    elif evidence.source in ("ami-banner", "tcp-banner"):
        found = _ami(value)
    elif evidence.source == "esl-banner":
        found = _esl(value)
    elif evidence.source == "jsonrpc":
        found = _jsonrpc(value)
    elif evidence.source == "host":
        found = _host(value)
    if found is None and evidence.source == "tcp-banner":
        found = _esl(value)
    if found is None:
        return None
    type_, label, version, confidence, specificity = found
    return Candidate(type_, label, version, confidence, (evidence,), specificity)


def _first(rules: Iterable[tuple[re.Pattern[str], Callable[..., Any]]], value: str) -> Any:
    for pattern, build in rules:
        match = pattern.fullmatch(value)
        if match:
            return build(match)
    return None


def _ami(value: str) -> tuple[str, str, str | None, str, int] | None:
    match = _AMI.match(value)
    if not match:
        return None
    major, minor = int(match["major"]), int(match["minor"])
    asterisk = AMI_TO_ASTERISK.get(major) or ("13" if (major, minor) >= (2, 10) and major == 2 else None)
    ami = value.split("/", 1)[1].split()[0]
    label = f"Asterisk {asterisk} (AMI {ami})" if asterisk else f"Asterisk (AMI {ami})"
    return ("asterisk", label, asterisk, "high", 1)


def _esl(value: str) -> tuple[str, str, str | None, str, int] | None:
    match = _ESL.search(value)
    if not match:
        return None
    if match.group(1).lower() == "text/rude-rejection":
        return ("freeswitch", "FreeSWITCH (ESL; this client is refused by its ACL)", None, "high", 1)
    return ("freeswitch", "FreeSWITCH (ESL)", None, "high", 1)


def _jsonrpc(value: str) -> tuple[str, str, str | None, str, int] | None:
    """A Kamailio `core.version` or OpenSIPS mi `version` answer: the reply body or its result."""
    result: Any = value
    try:
        reply = json.loads(value)
    except ValueError:
        reply = None
    if isinstance(reply, dict):
        result = reply.get("result", reply)
    elif isinstance(reply, str):
        result = reply
    if isinstance(result, dict):  # OpenSIPS: {"Server": "OpenSIPS (3.4.18 (x86_64/linux))"}
        result = result.get("Server") or result.get("server") or ""
    if not isinstance(result, str):
        return None
    text = result.strip()
    match = _KAMAILIO_RPC.match(text)
    if match:
        return ("kamailio", f"Kamailio {match['v']}", match["v"], "high", 1)
    sip = _first(_SIP_RULES, text)
    return sip if sip and sip[0] == "opensips" else None


def cloud_type(host: str) -> str | None:
    """twilio / vonage for their API (or SIP) host names; None for anything else."""
    name = _hostname(host)
    if name in CLOUD_HOSTS:
        return CLOUD_HOSTS[name]
    return next((t for domain, t in CLOUD_DOMAINS.items() if name.endswith("." + domain)), None)


def _host(value: str) -> tuple[str, str, str | None, str, int] | None:
    name = _hostname(value)
    type_ = cloud_type(name)
    if type_ is None:
        return None
    label = {"twilio": "Twilio", "vonage": "Vonage"}[type_]
    return (type_, f"{label} ({name})", None, "high" if name in CLOUD_HOSTS else "medium", 1)


def _hostname(value: str) -> str:
    text = value.strip().lower()
    if "://" in text:
        text = urlsplit(text).hostname or ""
    return text.rstrip(".").split(":")[0] if text.count(":") <= 1 else text


# ---------------------------------------------------------------- combining evidence


def classify(evidence: Iterable[Evidence], tried: Iterable[str] = ()) -> Detection:
    """Combine evidence into one Detection; candidates from different families → ambiguous."""
    seen = tuple(evidence)
    found = [c for c in (fingerprint(e) for e in seen) if c is not None]
    if not found:
        return Detection(None, None, "none", None, seen, tried=tuple(tried))
    families: dict[str, list[Candidate]] = {}
    for candidate in found:
        families.setdefault(_family(candidate.type), []).append(candidate)
    merged = sorted((_merge(group) for group in families.values()), key=_rank, reverse=True)
    notes = tuple(n for c in merged for n in _version_notes(families[_family(c.type)]))
    if len(merged) > 1:
        return Detection(
            None,
            None,
            merged[0].confidence,
            None,
            seen,
            ambiguous=True,
            candidates=tuple(merged),
            tried=tuple(tried),
            notes=(
                *notes,
                "different server types answered on this host (e.g. a SIP proxy in front of a PBX): "
                "choose one with --type",
            ),
        )
    best = merged[0]
    return Detection(best.type, best.version, best.confidence, best.label, seen, False, (best,), tuple(tried), notes)


def _family(type_: str) -> str:
    return "freeswitch" if type_ == "fusionpbx" else type_  # FusionPBX is FreeSWITCH with a web GUI


def _merge(group: list[Candidate]) -> Candidate:
    named = max(group, key=lambda c: (c.specificity, CONFIDENCE_ORDER[c.confidence]))
    versioned = [c for c in group if c.version]
    version_from = max(versioned, key=lambda c: (c.version.count("."), CONFIDENCE_ORDER[c.confidence]), default=None)
    version = version_from.version if version_from else None
    # The named product's own confidence, one level up when a different probe agrees on the family
    # (a bare `FreeSWITCH` SIP banner plus an ESL banner: FusionPBX stays "medium", not "high").
    confidence = named.confidence
    if len({e.kind for c in group for e in c.evidence}) > 1:
        confidence = {"low": "medium", "medium": "high"}.get(confidence, confidence)
    label = named.label
    if version and version not in label:
        label = f"{label} {version}"
    evidence = tuple(e for c in group for e in c.evidence)
    return Candidate(named.type, label, version, confidence, evidence, named.specificity)


def _rank(candidate: Candidate) -> tuple[int, int, int]:
    management = any(e.kind in MANAGEMENT_KINDS for e in candidate.evidence)
    return (CONFIDENCE_ORDER[candidate.confidence], int(management), len(candidate.evidence))


def _version_notes(group: list[Candidate]) -> list[str]:
    majors = {c.version.split(".")[0] for c in group if c.version}
    if len(majors) > 1:
        return [f"{group[0].type} versions disagree: " + ", ".join(sorted({c.version or "" for c in group}))]
    return []


# ---------------------------------------------------------------- probing a host
