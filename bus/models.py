"""The typed job messages on Redis and their results (pydantic, schema-versioned).

Only the server's *name* travels: credentials stay in the registry each worker reads, so a queue
dump never leaks a secret. Another service can build these with `producer.api` or push the JSON
that `ifbus schema` prints.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.json_schema import SkipJsonSchema

from bus import keys
from bus.errors import BusError, Outcome
from bus.sip import check_call_id
from bus.validate import DEFAULT_TIMEOUT, MAX_TIMEOUT, SCHEMA_VERSION, check_key, check_name, check_value

# The one definition of a request id (it is also the RQ job id and part of every per-request key).
REQUEST_ID_PATTERN = r"[A-Za-z0-9_-]{8,64}"
REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)


def _checked(check: Callable[[str], str]) -> AfterValidator:
    """pydantic reports only ValueErrors as validation errors; ours carry a user-facing message."""

    def validate(value: str) -> str:
        try:
            return check(value)
        except BusError as exc:
            raise ValueError(exc.message) from None

    return AfterValidator(validate)


ServerName = Annotated[str, _checked(check_name)]
Word = Annotated[str, _checked(lambda v: check_value("value", v))]
Key = Annotated[str, _checked(check_key)]
CallId = Annotated[str, _checked(check_call_id)]


def new_request_id() -> str:
    return uuid.uuid4().hex


class Routing(BaseModel):
    """The internal envelope: what the bus adds to a request on its way through the queues.

    Producers never write it (`ifbus schema` does not show it; bus.routing refuses a request that
    carries any): the producer or ingress stamps `submitted_at`, and the workers carry the failover
    state across hops. It may change with any release; the public fields may not (schema_version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    submitted_at: float | None = Field(default=None, description="Unix time the bus took the request")
    tried: list[ServerName] = Field(default_factory=list, description="servers already given up on")
    attempts: dict[ServerName, int] = Field(default_factory=dict, description="attempts made on each server")
    errors: dict[ServerName, str] = Field(default_factory=dict, description="last error on each server tried")
    last_outcome: Outcome | None = Field(default=None, description="class of the last failure, for the final answer")


class BaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[SCHEMA_VERSION] = SCHEMA_VERSION  # bus.validate's constant: one home
    request_id: str = Field(default_factory=new_request_id, pattern=f"^{REQUEST_ID_PATTERN}$")
    server: ServerName
    reply_key: str | None = Field(
        default=None, description="Redis list the worker LPUSHes the JobResult JSON to; None = nobody waits"
    )
    timeout: float = Field(
        default=DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT, description="Seconds the caller waits for the answer"
    )
    routing: SkipJsonSchema[Routing] = Field(default_factory=Routing, description="internal (bus.models.Routing)")

    @model_validator(mode="after")
    def _own_reply_key(self) -> BaseRequest:
        """A worker LPUSHes the result to `reply_key`: anything but this request's own reply list would
        let whoever writes a job make a worker push into another key (an RQ queue, another caller's
        reply). So the only accepted value is `ifbus:reply:<request_id>` (bus.keys.reply)."""
        if self.reply_key is not None and self.reply_key != keys.reply(self.request_id):
            raise ValueError(f"reply_key must be {keys.reply(self.request_id)!r} (this request's own reply list)")
        return self

    # Read-only views of the envelope, for the workers' failover code.
    @property
    def submitted_at(self) -> float | None:
        return self.routing.submitted_at

    @property
    def tried(self) -> list[str]:
        return self.routing.tried

    @property
    def attempts(self) -> dict[str, int]:
        return self.routing.attempts

    @property
    def errors(self) -> dict[str, str]:
        return self.routing.errors

    @property
    def last_outcome(self) -> Outcome | None:
        return self.routing.last_outcome

    def rerouted(self, **changes: Any) -> Self:
        """This request with its envelope updated (a failover hop, the submission time)."""
        return self.model_copy(update={"routing": self.routing.model_copy(update=changes)})


class TestRequest(BaseRequest):
    """Check the management API answers and the credentials work."""

    op: Literal["test"] = "test"


class CallRequest(BaseRequest):
    """Place a click-to-call: ring `from`, connect it to `to`."""

    op: Literal["call"] = "call"
    from_: Word = Field(alias="from")
    to: Word
    until: Literal["answered", "accepted"] = Field(
        default="answered",
        description="'answered': report the call's setup outcome (call id or SIP code); "
        "'accepted': return as soon as the server accepted the request",
    )
    extras: dict[Key, Word] = Field(default_factory=dict, description="vendor extras, e.g. twiml=, url=")


class HangupRequest(BaseRequest):
    """End a call by the id `call` returned."""

    op: Literal["hangup"] = "hangup"
    call_id: CallId
    extras: dict[Key, Word] = Field(default_factory=dict)


JobRequest = Annotated[TestRequest | CallRequest | HangupRequest, Field(discriminator="op")]
REQUEST_ADAPTER: TypeAdapter[JobRequest] = TypeAdapter(JobRequest)


class JobResult(BaseModel):
    """The one final answer to a request; `exit_code` is the CLI's (docs/architecture.md table)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[SCHEMA_VERSION] = SCHEMA_VERSION
    request_id: str
    op: Literal["test", "call", "hangup"]
    server: str = Field(description="the server that carried the request (or the last one tried)")
    outcome: Outcome
    exit_code: int
    message: str
    call_id: str | None = None
    sip_code: int | None = None
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    attempts: dict[str, int] = Field(default_factory=dict, description="attempts made on each server tried")
    errors: dict[str, str] = Field(default_factory=dict, description="last error on each server given up on")
    mode: Literal["queue", "inline"] = "queue"

    @model_validator(mode="after")
    def _no_secrets(self) -> JobResult:
        """A result travels to Redis (`ifbus:result:*`, reply lists) and to the caller's screen: free
        text in it (an adapter's error quoting a URL, a server's message) passes bus.secrets' masking."""
        from bus.secrets import redact_text

        self.message = redact_text(self.message)
        self.reason = redact_text(self.reason) if self.reason else self.reason
        self.errors = {k: redact_text(v) for k, v in self.errors.items()}
        self.data = _redacted(self.data)
        return self

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def _redacted(value: Any) -> Any:
    from bus.secrets import redact_text

    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def parse_request(payload: Any) -> BaseRequest:
    return REQUEST_ADAPTER.validate_python(payload)


def json_schemas() -> dict[str, Any]:
    return {
        "request": REQUEST_ADAPTER.json_schema(by_alias=True),
        "result": JobResult.model_json_schema(),
    }
