"""Outcome classes and the exceptions that carry them.

Every failure in the system is one of a few classes (docs/architecture.md, "The flow of one call"). The class
decides retry, failover and the CLI's exit code, so adapters raise these and nothing else leaks out.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    AUTH = "auth"
    UNREACHABLE = "unreachable"
    OVERLOADED = "overloaded"
    REJECTED = "rejected"
    AMBIGUOUS = "ambiguous"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]

    @property
    def transient(self) -> bool:
        """Nothing was done on the server: safe to try again, even for an originate."""
        return self in (Outcome.UNREACHABLE, Outcome.OVERLOADED)


_EXIT_CODES = {
    Outcome.OK: 0,
    Outcome.NOT_FOUND: 1,
    Outcome.INVALID: 2,
    Outcome.AUTH: 3,
    Outcome.UNREACHABLE: 4,
    Outcome.OVERLOADED: 4,
    Outcome.REJECTED: 5,
    Outcome.AMBIGUOUS: 6,
}


class BusError(Exception):
    """A failure with an outcome class and a message fit to show a user (never a secret)."""

    outcome: Outcome = Outcome.INVALID

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


class NotFound(BusError):
    outcome = Outcome.NOT_FOUND


class InvalidInput(BusError):
    outcome = Outcome.INVALID


class RegistryError(BusError):
    """The registry file cannot be read or parsed; it is reported, never rewritten."""

    outcome = Outcome.INVALID


class AuthFailed(BusError):
    outcome = Outcome.AUTH


class Unreachable(BusError):
    """Nothing reached the server (refused, DNS, connect timeout, TLS handshake)."""

    outcome = Outcome.UNREACHABLE


class Overloaded(BusError):
    """The server said 'not now' (429/503) and did nothing; retry after `retry_after` seconds."""

    outcome = Outcome.OVERLOADED

    def __init__(self, message: str, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class CallRejected(BusError):
    """The far end refused the call with a SIP final response: final, never failed over."""

    outcome = Outcome.REJECTED

    def __init__(self, sip_code: int, reason: str, **details: Any) -> None:
        super().__init__(f"Call failed: SIP {sip_code} {reason}", sip_code=sip_code, reason=reason, **details)
        self.sip_code = sip_code
        self.reason = reason


class OutcomeUnknown(BusError):
    """The request may have been acted on (timeout or reset after sending): never re-sent blindly."""

    outcome = Outcome.AMBIGUOUS
