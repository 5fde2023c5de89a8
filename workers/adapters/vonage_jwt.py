"""The Vonage Voice API's credential: a short-lived RS256 JWT signed with the application's private key.

Claims as Vonage documents them (developer.vonage.com/jwt; docs/reference/vendors.md §6.1): `application_id`,
`iat`, `exp`, and a unique `jti`. Vonage accepts up to 24 h of validity; a token here lives
`lifetime` seconds (minutes, not hours: a leaked token is worth little) and is reused until
`margin` seconds before it expires, so a burst of status polls signs once instead of once per poll.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Generator

import httpx
import jwt

from bus.credentials import load_private_key

DEFAULT_LIFETIME = 300.0
DEFAULT_MARGIN = 60.0


class TokenMinter:
    """Signs and caches the bearer token; never shows the key or the token in its repr."""

    def __init__(
        self,
        application_id: str,
        private_key: str,
        lifetime: float = DEFAULT_LIFETIME,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.application_id = application_id
        self._key = load_private_key(private_key)
        self.lifetime = lifetime
        self.margin = min(margin, lifetime / 2)
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenMinter(application_id={self.application_id!r})"

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires - self.margin:
                issued = int(now)
                expires = issued + int(self.lifetime)
                claims = {
                    "application_id": self.application_id,
                    "iat": issued,
                    "exp": expires,
                    "jti": str(uuid.uuid4()),
                }
                self._token = jwt.encode(claims, self._key, algorithm="RS256")
                self._expires = float(expires)
            return self._token

    def secrets(self) -> tuple[str, ...]:
        """What must never appear in a message: the current token."""
        return (self._token,) if self._token else ()


class BearerJWT(httpx.Auth):
    """httpx auth flow: each request gets `Authorization: Bearer <current token>`."""

    def __init__(self, minter: TokenMinter) -> None:
        self.minter = minter

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.minter.token()}"
        yield request
