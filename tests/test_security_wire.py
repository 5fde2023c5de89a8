"""Issue 7's fuzz at the last step before the wire: random `from`/`to`/`call_id` values go through each
line-protocol adapter's own request builder, and what would be written must keep the protocol's
shape — one AMI action with exactly the headers the adapter meant, one ESL command line whose
originate string has one variable block and two parts. A value the grammar refuses raises
InvalidInput before anything is built; nothing else may come out.

(The SIP-URI and number forms every vendor shares are fuzzed in tests/test_security_sip.py; Kamailio's
and OpenSIPS's JSON bodies carry exactly those URIs, Twilio's form and Vonage's JSON are encoded by
httpx, so no delimiter of theirs can be injected.)
"""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import InvalidInput
from bus.server import ServerEntry
from workers.adapters import ami, esl
from workers.adapters.asterisk import AsteriskAdapter
from workers.adapters.freeswitch import FreeSwitchAdapter

_NASTY = "\r\n\x00:{}[],&|;$'\" \t<>@/=+*#.-_^\\()`~!?%"
_parts = st.one_of(
    st.sampled_from([
        "1001", "PJSIP/1001", "Local/1001@from-internal", "sofia/1001", "user/1001@lab.test", "\r\nVariable: x=1",
        "\nAction: Hangup", "{origination_caller_id_number=666}", "1001,sofia/gateway/evil/1", "&park()", " XML evil",
        "1001\r\n\r\nAction: Originate", "sofia/internal/1001@h:5080", "[leg_timeout=1]", "${system(id)}",
    ]),
    st.text(alphabet=_NASTY, max_size=4),
    st.text(max_size=6),
)  # fmt: skip
party = st.lists(_parts, min_size=1, max_size=6).map("".join)

ASTERISK = AsteriskAdapter("ast", ServerEntry.build("asterisk", {"user": "admin", "secret": "pass123"}))
FREESWITCH = FreeSwitchAdapter("fs", ServerEntry.build("freeswitch", {"apikey": "ClueCon", "domain": "lab.test"}))


@settings(database=None, max_examples=400, deadline=None)
@given(party, party)
def test_ami_originate_is_one_action_with_only_our_headers(from_: str, to: str) -> None:
    try:
        fields = ASTERISK.originate_fields(from_, to, "ifbus-" + uuid.uuid4().hex)
        wire = ami.action("Originate", "a1", fields)
    except InvalidInput:
        return
    text = wire.decode()
    assert text.endswith("\r\n\r\n") and text.count("\r\n\r\n") == 1, text
    lines = text[:-4].split("\r\n")
    keys = [line.split(":", 1)[0] for line in lines]
    assert keys == ["Action", "ActionID", *(k for k, _ in fields)], text
    assert all("\r" not in line and "\n" not in line and "\x00" not in line for line in lines)


@settings(database=None, max_examples=400, deadline=None)
@given(party, party)
def test_esl_originate_is_one_command_with_one_variable_block(from_: str, to: str) -> None:
    call_uuid = str(uuid.uuid4())
    try:
        command = FREESWITCH.originate_command(from_, to, call_uuid)
        wire = esl.bgapi(command, str(uuid.uuid4()))
    except InvalidInput:
        return
    text = wire.decode()
    head, _, rest = text.partition("\n")
    assert rest.startswith("Job-UUID: ") and rest.endswith("\n\n") and rest.count("\n") == 2, text
    assert head.startswith("bgapi originate {") and "\r" not in head and "\x00" not in head
    args = head.removeprefix("bgapi originate ")
    variables, _, legs = args[1:].partition("}")
    assert "{" not in legs and "}" not in legs and "[" not in legs, head  # no second variable block
    assert f"origination_uuid={call_uuid}" in variables.split(",")
    a_leg, _, b_part = legs.partition(" ")
    assert a_leg and b_part and "," not in a_leg and "&" not in a_leg, head
    assert b_part.startswith("&bridge(") or len(b_part.split(" ")) == 3, head


def test_the_spec_lines_build_the_expected_wire() -> None:
    """The fuzz above must not pass by refusing everything: the spec's own lines build (SPEC.md)."""
    fields = dict(ASTERISK.originate_fields("1001", "2000", "chan-001"))
    assert (fields["Channel"], fields["Exten"], fields["ChannelId"]) == ("PJSIP/1001", "2000", "chan-001")
    command = FREESWITCH.originate_command("sofia/1001", "sofia/2000", "0f0e0d0c-0b0a-4908-8706-050403020100")
    assert command.startswith("originate {origination_uuid=0f0e0d0c-0b0a-4908-8706-050403020100,")
    assert command.endswith("}sofia/internal/1001@lab.test &bridge(sofia/internal/2000@lab.test)")
