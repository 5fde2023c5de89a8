"""Job messages: the wire shape other producers rely on, and refusal of bad messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bus.models import CallRequest, JobResult, parse_request
from workers.jobs import execute


def test_call_request_wire_shape_uses_from_and_a_schema_version() -> None:
    request = CallRequest(server="mykam", **{"from": "1001", "to": "2000"})
    wire = request.model_dump(mode="json", by_alias=True)
    assert wire["from"] == "1001" and "from_" not in wire
    assert wire["schema_version"] == 1 and wire["op"] == "call" and len(wire["request_id"]) == 32
    assert parse_request(wire) == request


@pytest.mark.parametrize(
    "payload",
    [
        {"op": "call", "server": "mykam", "from": "1001"},  # no to
        {"op": "call", "server": "mykam", "from": "1001", "to": "2\r\n0"},
        {"op": "dial", "server": "mykam"},
        {"op": "test", "server": "../x"},
        {"op": "test", "server": "mykam", "schema_version": 2},
        {"op": "test", "server": "mykam", "credentials": {"token": "x"}},  # unknown field
        {"op": "hangup", "server": "mykam", "call_id": 42},
    ],
)
def test_bad_messages_are_refused(payload: dict) -> None:
    with pytest.raises(ValidationError):
        parse_request(payload)


def test_a_bad_message_becomes_one_invalid_result_not_an_exception() -> None:
    result = JobResult.model_validate(execute({"op": "call", "server": "mykam", "from": "1", "to": "2\n"}))
    assert (result.outcome, result.exit_code) == ("invalid", 2)
    assert "control characters" in result.message
    result = JobResult.model_validate(execute(["not", "a", "dict"]))
    assert result.exit_code == 2
