"""Validate what a fake REST API recorded against the vendor's own OpenAPI description (openapi-core).

Why one home: the Twilio and Vonage contract tests check the same thing the same way — a request the
adapter sent over loopback, seen at the vendor's real origin, and the fake's answer to it — and differ
only in the description and the origin.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.http_fake import Recorded


class SpecRequest:
    """openapi-core's Request protocol for a request the fake recorded, at the vendor's real origin."""

    def __init__(self, record: Recorded, origin: str) -> None:
        parts = urlsplit(record.path)
        self.host_url = origin
        self.path = parts.path
        self.method = record.method.lower()
        self.body = record.body or None
        self.content_type = record.headers.get("content-type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(parts.query)),
            header=Headers(list(record.headers.items())),
            cookie=ImmutableMultiDict(),
        )


class SpecResponse:
    """openapi-core's Response protocol for the fake's answer to a recorded request."""

    def __init__(self, record: Recorded) -> None:
        assert record.response_status is not None
        self.status_code = record.response_status
        self.headers = Headers(list(record.response_headers.items()))
        self.content_type = record.response_headers.get("Content-Type", "")
        self.data = record.response_body


def check(spec: OpenAPI, record: Recorded, origin: str, response: bool = True) -> None:
    """Raise openapi-core's validation error unless the request (and, with `response`, the answer) fits."""
    spec.validate_request(SpecRequest(record, origin))
    if response:
        spec.validate_response(SpecRequest(record, origin), SpecResponse(record))
