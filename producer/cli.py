"""The `ifbus` / `if bus` command line: parsing and printing only.

Heavy libraries (pydantic, redis, rq, httpx) are imported inside the commands that need them, so
`ifbus list sip` and `--help` start in a few tens of milliseconds (bench/startup.py).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from bus.errors import InvalidInput
from bus.validate import DEFAULT_TIMEOUT
from bus.vendors import TYPES
from producer import helpcache
from producer.output import dumps, emit, emit_failure, guard, interrupted, reader_left

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
KIND_HELP = "the word `sip` (the spec's grammar: `if bus <command> sip <name>`)"


def guarded(func: Callable[..., None]) -> Callable[..., None]:
    """Turn every failure into a message and an exit code (producer.output.guard); click's own
    exceptions go on to click."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        guard(lambda: func(*args, **kwargs), bool(kwargs.get("as_json")), (click.exceptions.Exit, click.ClickException))

    return wrapper


def check_kind(kind: str) -> None:
    if kind != "sip":
        raise click.UsageError(f"expected `sip` after the command, got {kind!r} (e.g. `ifbus list sip`)")


def wants_json(args: list[str]) -> bool:
    """`--json` among the options (before a `--`, after which words are values)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


class JsonGroup(click.Group):
    """With `--json` anywhere on the line, every outcome is one JSON object on stdout, click's own
    usage errors included (`--port 99999`, `--until whenever`, `list sips`): they are raised while
    parsing, before a command runs, so only the group's `main` can print them."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        argv = list(sys.argv[1:] if args is None else args)
        as_json = wants_json(argv)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            outcome = "invalid" if exc.exit_code == 2 else "error"
            emit_failure(as_json, outcome, exc.exit_code, exc.format_message())
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            interrupted(as_json)
        except BrokenPipeError:
            reader_left()
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def get_help(self, ctx: click.Context) -> str:
        """The help as click renders it; the top level's is kept for producer.entry's fast `--help`."""
        text = super().get_help(ctx)
        if ctx.parent is None:
            helpcache.remember(text)
        return text


def _complete(name: str) -> Callable[..., Any]:
    """A shell-completion callback from producer.completion, imported only when the shell asks."""

    def callback(ctx: click.Context, param: click.Parameter, incomplete: str) -> Any:
        from producer import completion

        return getattr(completion, name)(ctx, param, incomplete)

    return callback


def json_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(func)


class GreedyPairs(click.Command):
    """Lets `--auth user=admin secret=pass123` take every key=value word that follows it, as the
    spec writes it, by rewriting it to repeated `--auth` options before click parses."""

    greedy = ("--auth", "--opt")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.resilient_parsing:  # shell completion: a half-typed line is normal, never an error
            return super().parse_args(ctx, self._rewrite(args))
        return super().parse_args(ctx, self._rewrite(args, ctx))

    def _rewrite(self, args: list[str], ctx: click.Context | None = None) -> list[str]:
        """`--auth a=1 b=2` → `--auth a=1 --auth b=2`; with no ctx (completion) nothing is refused."""
        out: list[str] = []
        current: str | None = None  # the greedy option whose pairs are being read
        pending = False  # it has not taken a pair yet
        for arg in args:
            if arg in self.greedy:
                if pending and ctx is not None:
                    raise click.UsageError(f"{current} expects key=value words", ctx)
                current, pending = arg, True
                continue
            if current and "=" in arg and not arg.startswith("-"):
                for part in _split_quoted(arg):
                    out += [current, part]
                pending = False
                continue
            if pending and ctx is not None:
                raise click.UsageError(f"{current} expects key=value words, got {arg!r}", ctx)
            current = None
            out.append(arg)
        if pending and ctx is not None:
            raise click.UsageError(f"{current} expects key=value words", ctx)
        return out


def _split_quoted(arg: str) -> list[str]:
    """`--auth "user=admin secret=x"` (one quoted word) also works, when every part is a pair."""
    parts = arg.split()
    return parts if len(parts) > 1 and all("=" in p for p in parts) else [arg]


# ---------------------------------------------------------------- commands


@click.group(cls=JsonGroup, context_settings=CONTEXT)
@click.version_option(package_name="ifbus-sip", prog_name="ifbus")
def cli() -> None:
    """Place, test and hang up calls on SIP/VoIP servers (Asterisk, FreeSWITCH, Kamailio, OpenSIPS,
    Twilio, Vonage, FusionPBX) from one command line and one Redis queue.

    \b
      ifbus add sip mykam --type kamailio --auth token=xyz789 realm=sip.local
      ifbus test sip mykam
      ifbus call sip mykam from=1001 to=2000
      ifbus hangup sip mykam call_id=<id from call>
      ifbus list sip
      ifbus remove sip mykam

    `if bus …` is the same program (`if` is a shell keyword: type `\\if bus …` at a prompt).
    Jobs go through Redis when IFBUS_REDIS_URL is set or a Redis answers on 127.0.0.1:6379,
    else they run in this process. Registry: ~/.if/sip_servers.json (IFBUS_HOME moves it).
    """


@cli.command(cls=GreedyPairs, context_settings=CONTEXT)
@click.argument("kind", metavar="sip", shell_complete=_complete("kinds"))
@click.argument("name", shell_complete=_complete("server_names"))
@click.argument("type_arg", metavar="[TYPE]", required=False, shell_complete=_complete("types"))
@click.option(
    "--type",
    "type_opt",
    shell_complete=_complete("types"),
    help=f"Server type: {', '.join(TYPES)}; left out or `auto`: detected by probing --host.",
)
@click.option("--auth", "auth", multiple=True, metavar="KEY=VALUE…", shell_complete=_complete("auth_keys"),
              help="Credentials, e.g. --auth token=x realm=y; a value may be @/path/file (read now) "
                   "or env:NAME (read by each worker when used): docs/operations.md.")
@click.option("--host", help="Management host (default: the domain/realm given, else 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Management port (default: the vendor's).")
@click.option("--pool", help="Failover pool name (default: the server type).")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE…", shell_complete=_complete("option_keys"),
              help="Per-server option, e.g. --opt path=/RPC.")
@click.option("--replace", is_flag=True, help="Overwrite an existing entry of the same name.")
@json_option
@guarded
def add(
    kind: str,
    name: str,
    type_arg: str | None,
    type_opt: str | None,
    auth: tuple[str, ...],
    host: str | None,
    port: int | None,
    pool: str | None,
    opts: tuple[str, ...],
    replace: bool,
    as_json: bool,
) -> None:
    """Register a server.

    \b
    Examples (the spec's forms):
      ifbus add sip myast --type asterisk --auth user=admin secret=pass123
      ifbus add sip myfs --type freeswitch --auth apikey=ABC123 domain=fs.local
      ifbus add sip mykam --type kamailio --auth token=xyz789 realm=sip.local --port 5060
      ifbus add sip myos --type opensips --auth user=admin secret=pass domain=opensips.local
      ifbus add sip mytw --type twilio --auth account_sid=AC… auth_token=…
      ifbus add sip myvon --type vonage --auth api_key=key123 api_secret=secret456
      ifbus add sip myfpbx --type fusionpbx --auth username=admin password=pass123 domain=fusion.local

    \b
    Without a type the host is probed (SIP OPTIONS on --opt sip_port=, default 5060; the AMI and
    ESL banners) and the detected type is stored; exit 4 if nothing answers, 2 if ambiguous:
      ifbus add sip edge1 --host 10.0.0.5
      ifbus add sip edge1 --host 10.0.0.5 --opt sip_port=5080
    """
    from bus.registry import open_registry
    from bus.server import ServerEntry
    from bus.validate import check_name, parse_pairs

    check_kind(kind)
    check_name(name)
    if type_arg and type_opt and type_arg != type_opt:
        raise InvalidInput(f"two types given: {type_arg!r} and --type {type_opt!r}")
    type_ = type_opt or type_arg
    auth_pairs, options = parse_pairs(auth, "--auth"), parse_pairs(opts, "--opt")
    detected = None
    if not type_ or type_ == "auto":
        from bus.detect import detect_for_add  # only here: `add` with a type never imports probing code

        where = host or auth_pairs.get("domain") or auth_pairs.get("realm") or "127.0.0.1"
        if not replace and name in open_registry().entries():  # say so before seconds of probing
            raise InvalidInput(f"Server {name!r} already exists: use --replace to overwrite it")
        detected = detect_for_add(where, port, options)
        type_, port, options, host = detected.type, detected.port, detected.options, where
    from bus.credentials import resolve_auth

    entry = ServerEntry.build(type_, resolve_auth(type_, auth_pairs), host, port, pool, options)
    open_registry().add(name, entry, replace=replace)
    view = entry.public_view(name)
    added = f"Added {name} ({type_}) at {view['host'] or view['options'].get('base_url')}"
    if detected is None:
        emit(as_json, {"ok": True, "added": view}, added)
    else:
        summary = detected.detection.summary()
        emit(as_json, {"ok": True, "added": view, "detected": detected.detection.to_dict()}, f"{summary}\n{added}")


@cli.command("list", context_settings=CONTEXT)
@click.argument("kind", metavar="sip", shell_complete=_complete("kinds"))
@json_option
@guarded
def list_(kind: str, as_json: bool) -> None:
    """List registered servers; credentials are masked.

    \b
    Example:
      ifbus list sip --json
    """
    from producer.listing import list_servers

    check_kind(kind)
    list_servers(as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("kind", metavar="sip", shell_complete=_complete("kinds"))
@click.argument("name", shell_complete=_complete("server_names"))
@json_option
@guarded
def remove(kind: str, name: str, as_json: bool) -> None:
    """Remove a server from the registry.

    \b
    Example:
      ifbus remove sip myast
    """
    from bus.registry import open_registry

    check_kind(kind)
    entry = open_registry().remove(name)
    emit(as_json, {"ok": True, "removed": name, "type": entry.type}, f"Removed {name} ({entry.type})")


def job_options(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option(
        "--timeout",
        type=click.FloatRange(0.1, 3600),
        default=None,
        help=f"Seconds to wait for the answer (default IFBUS_TIMEOUT or {DEFAULT_TIMEOUT:g}).",
    )(func)
    func = click.option("--no-wait", is_flag=True, help="Enqueue and print the job id at once (queue mode).")(func)
    func = click.option("--request-id", help="Your own id for this request (8-64 letters, digits, _ or -).")(func)
    return json_option(func)


@cli.command("test", context_settings=CONTEXT)
@click.argument("kind", metavar="sip", shell_complete=_complete("kinds"))
@click.argument("name", shell_complete=_complete("server_names"))
@job_options
@guarded
def test_(kind: str, name: str, timeout: float | None, no_wait: bool, request_id: str | None, as_json: bool) -> None:
    """Check that a server's management API answers and the credentials work.

    \b
    Example:
      ifbus test sip mykam
    """
    check_kind(kind)
    _submit("test", {"server": name}, timeout, no_wait, request_id, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("kind", metavar="sip", shell_complete=_complete("kinds"))
@click.argument("name", shell_complete=_complete("server_names"))
@click.argument("words", nargs=-1, metavar="from=… to=… [KEY=VALUE…]", shell_complete=_complete("call_words"))
@click.option(
    "--until",
    type=click.Choice(["answered", "accepted"]),
    default="answered",
    show_default=True,
    help="answered: wait for the call's setup outcome; accepted: return once the server took it.",
)
@job_options
@guarded
def call(
    kind: str,
    name: str,
    words: tuple[str, ...],
    until: str,
    timeout: float | None,
    no_wait: bool,
    request_id: str | None,
    as_json: bool,
) -> None:
    """Place a click-to-call: ring `from`, then connect it to `to`.

    Exits 0 with the call id once answered; 5 with the SIP code when refused
    (`Call failed: SIP 486 Busy Here`); 6 when the outcome is unknown.

    \b
    Examples:
      ifbus call sip myast from=1001 to=2000
      ifbus call sip mytw from=+15005550006 to=+14155552671 twiml='<Response><Say>Hi</Say></Response>'
      ifbus call sip mykam from=1001 to=2000 --until accepted --json
    """
    from bus.validate import parse_pairs

    check_kind(kind)
    pairs = parse_pairs(words, "argument")
    missing = [k for k in ("from", "to") if k not in pairs]
    if missing:
        raise InvalidInput(f"missing {' and '.join(k + '=…' for k in missing)} (e.g. from=1001 to=2000)")
    fields = {"server": name, "from": pairs.pop("from"), "to": pairs.pop("to"), "until": until, "extras": pairs}
    _submit("call", fields, timeout, no_wait, request_id, as_json)


@cli.command(context_settings=CONTEXT)
@click.argument("kind", metavar="sip", shell_complete=_complete("kinds"))
@click.argument("name", shell_complete=_complete("server_names"))
@click.argument("words", nargs=-1, metavar="call_id=… [KEY=VALUE…]", shell_complete=_complete("hangup_words"))
@job_options
@guarded
def hangup(
    kind: str,
    name: str,
    words: tuple[str, ...],
    timeout: float | None,
    no_wait: bool,
    request_id: str | None,
    as_json: bool,
) -> None:
    """End a call by the id `call` printed.

    \b
    Example:
      ifbus hangup sip myast call_id=chan-001
    """
    from bus.validate import parse_pairs

    check_kind(kind)
    pairs = parse_pairs(words, "argument")
    if "call_id" not in pairs:
        raise InvalidInput("missing call_id=… (the id `ifbus call` printed)")
    _submit(
        "hangup",
        {"server": name, "call_id": pairs.pop("call_id"), "extras": pairs},
        timeout,
        no_wait,
        request_id,
        as_json,
    )


def _submit(
    op: str, fields: dict[str, Any], timeout: float | None, no_wait: bool, request_id: str | None, as_json: bool
) -> None:
    from producer import light

    outcome = light.submit(op, fields, timeout, no_wait, request_id)  # queue mode's plain case, light
    if outcome is None:
        outcome = _submit_full(op, fields, timeout, no_wait, request_id)
    if isinstance(outcome, str):
        emit(as_json, {"ok": True, "job_id": outcome, "queued": True}, outcome)
        return
    if outcome["exit_code"]:
        if as_json:
            click.echo(dumps({"ok": False, **outcome}, ensure_ascii=False))
        click.echo(outcome["message"] if outcome["sip_code"] else f"Error: {outcome['message']}", err=True)
        sys.exit(outcome["exit_code"])
    data = outcome["data"]
    line = outcome["message"] + (f"\ncall_id={outcome['call_id']}" if outcome["call_id"] else "")
    if "health" in data:
        line += f"\nhealth: {data['health']} (served by {outcome['server']})"
    if "warning" in data:
        click.echo(f"warning: {data['warning']}", err=True)
    emit(as_json, {"ok": True, **outcome}, line)


def _submit_full(
    op: str, fields: dict[str, Any], timeout: float | None, no_wait: bool, request_id: str | None
) -> dict[str, Any] | str:
    """Every case through producer.api (pydantic models and settings, redis-py, embedded mode): the
    JobResult as JSON, or the job id."""
    from pydantic import ValidationError

    from bus.models import CallRequest, HangupRequest, TestRequest
    from bus.settings import Settings
    from producer.api import Producer

    try:
        settings = Settings()
    except ValidationError as exc:
        raise InvalidInput(f"bad IFBUS_* environment: {_first_error(exc)}") from None
    model = {"test": TestRequest, "call": CallRequest, "hangup": HangupRequest}[op]
    fields = {**fields, "timeout": timeout or settings.timeout}
    from bus.redis_conn import limit

    limit(fields["timeout"])  # connecting to Redis may not take longer than the answer may
    if request_id:
        fields["request_id"] = request_id
    try:
        request = model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput(_first_error(exc)) from None
    producer = Producer(settings, runner=embedded)
    outcome = producer.submit(request, wait=not no_wait)
    if producer.notice:
        click.echo(f"ifbus: {producer.notice}", err=True)
    return outcome if isinstance(outcome, str) else outcome.model_dump(mode="json")


def embedded(payload: dict[str, Any], mode: str = "inline") -> dict[str, Any]:
    """Embedded mode: the worker's job function in this process (imported only when it runs, and
    logging set up only then: a queue-mode producer logs nothing and never loads structlog)."""
    from bus.logging import configure
    from bus.paths import log_level
    from workers.jobs import execute

    configure(log_level("WARNING"))
    return execute(payload, mode=mode)


def _first_error(exc: Any) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in error["loc"] if p not in ("function-after[validate(), str]",))
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


@cli.command(context_settings=CONTEXT)
@click.argument("job_id")
@json_option
@guarded
def job(job_id: str, as_json: bool) -> None:
    """Look up a queued job by id (what `--no-wait` or a timeout printed).

    A call still ringing or talking is `in flight` (with the worker following it) until the bus has
    its answer, then `finished` with that answer.

    \b
    Example:
      ifbus job 3f1c0e9a2b7d4e0f8a6b5c4d3e2f1a0b
    """
    from bus.models import REQUEST_ID_RE
    from producer.api import job_status

    if not REQUEST_ID_RE.fullmatch(job_id):
        raise InvalidInput(f"invalid job id {job_id[:70]!r}")
    status = job_status(job_id)
    result = status["result"] or {}
    line = f"{job_id}: {status['status']}" + (f" — {result.get('message')}" if result else "")
    if status["status"] == "in_flight":
        line = (f"{job_id}: in flight — call {status['call_id'] or '?'} on {status['server']}, "
                f"followed by worker {status['followed_by'] or '(being adopted)'}; the answer comes when it settles")
    elif status["status"] == "unknown":
        line = f"{job_id}: unknown — the call was handed to a follower and no answer or record of it is left"
    emit(as_json, {"ok": True, **status}, line)


@cli.command(context_settings=CONTEXT)
@click.argument("types", nargs=-1, metavar="[TYPE…]")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes to run (each a non-forking RQ worker).",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), envvar="IFBUS_METRICS_PORT", default=None,
              help="Serve Prometheus /metrics on this port for all --concurrency processes (IFBUS_METRICS_PORT).")
@click.option("--metrics-addr", envvar="IFBUS_METRICS_ADDR", default="0.0.0.0", show_default=True,
              help="Address /metrics listens on (IFBUS_METRICS_ADDR).")
@click.option("--max-inflight", type=click.IntRange(1, 100_000), envvar="IFBUS_MAX_INFLIGHT", default=None,
              help="Calls one process follows at once; at the cap it takes no job until one settles "
                   "(IFBUS_MAX_INFLIGHT, default 1000).")  # fmt: skip
@json_option
@guarded
def worker(types: tuple[str, ...], concurrency: int, burst: bool, metrics_port: int | None, metrics_addr: str,
           max_inflight: int | None, as_json: bool) -> None:  # fmt: skip
    """Run RQ workers for vendor queues (all types by default).

    SIGTERM finishes the current job, then exits. Logs are JSON lines on stderr.

    \b
    Examples:
      ifbus worker                       # every vendor queue
      ifbus worker kamailio --concurrency 4 --metrics-port 9108
    """
    from bus.logging import configure
    from bus.redis_conn import connect
    from bus.settings import Settings
    from bus.vendors import vendor
    from workers.worker import run_workers

    for type_ in types:
        vendor(type_)
    if max_inflight is not None:  # read by each worker process's follower, --concurrency children included
        import os

        os.environ["IFBUS_MAX_INFLIGHT"] = str(max_inflight)
    settings = Settings()
    configure(settings.log_level)
    connect(settings.effective_redis_url, "the worker needs it")  # a clear exit 4 rather than RQ's traceback
    run_workers(
        settings.effective_redis_url,
        list(types or TYPES),
        concurrency,
        burst,
        settings.log_level,
        settings.probe_interval,
        metrics_port,
        metrics_addr,
    )
    if as_json:  # the one object, once the workers have stopped
        emit(True, {"ok": True, "stopped": True}, "")


@cli.command(context_settings=CONTEXT)
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="Seconds to wait for Redis.")  # fmt: skip
@json_option
@guarded
def status(timeout: float, as_json: bool) -> None:
    """Queues (depth, oldest job, workers), servers (breaker, failures, last probe) and failed jobs.

    \b
    Examples:
      ifbus status
      ifbus status --json | jq '.queues[] | {queue, depth}'
    """
    from bus.status import render, report

    result = report(timeout)
    emit(as_json, {"ok": True, **result}, render(result))


@cli.command(context_settings=CONTEXT)
@guarded
def ingress() -> None:
    """Queue JSON requests that services in any language LPUSH on the Redis list `ifbus:requests`.

    Each request is validated, deduplicated and routed like `ifbus call`; its answer goes to its
    reply key (`ifbus:reply:<request_id>`); what cannot be answered is parked on
    `ifbus:requests:dead`. Run any number. SIGTERM finishes the current message, then exits.
    The contract, with redis-cli / Node / Go examples: docs/producers.md.

    \b
    Example:
      ifbus ingress &
      redis-cli LPUSH ifbus:requests '{"op":"test","server":"mykam","request_id":"req-0001",
                                       "reply_key":"ifbus:reply:req-0001"}'
      redis-cli BLPOP ifbus:reply:req-0001 30
    """
    from bus.logging import configure
    from bus.redis_conn import connect
    from bus.registry import open_registry
    from bus.settings import Settings
    from producer.ingress import serve

    settings = Settings()
    configure(settings.log_level)
    redis = connect(settings.effective_redis_url, "the ingress needs it", socket_timeout=None)
    serve(redis, open_registry(settings.home))


@cli.command(context_settings=CONTEXT)
@json_option
@guarded
def schema(as_json: bool) -> None:
    """Print the JSON Schema of the job messages (request and result) for other producers.

    \b
    Example:
      ifbus schema > ifbus-schema.json
      ifbus schema --json | jq .schemas.request
    """
    from bus.models import json_schemas

    if as_json:
        emit(True, {"ok": True, "schemas": json_schemas()}, "")
    else:
        click.echo(dumps(json_schemas(), indent=2))


@cli.command(context_settings=CONTEXT)
@click.argument("kind", metavar="sip", shell_complete=_complete("kinds"))
@click.argument("name", shell_complete=_complete("server_names"))
@json_option
@guarded
def calls(kind: str, name: str, as_json: bool) -> None:
    """List the calls the bus placed on a server, and whether the server still carries them.

    The bus's record (the ledger in Redis: calls of the last 24 h) is checked against the server
    where it can tell: Kamailio's dialogs (`kamcmd dlg.list`); other types show "unknown" for now.
    Embedded mode keeps no record between processes, so it lists nothing.

    \b
    Example:
      ifbus calls sip mykam --json
    """
    from bus.registry import open_registry
    from bus.settings import Settings
    from producer.api import Producer

    check_kind(kind)
    entry = open_registry().get(name)
    producer = Producer(Settings(), runner=embedded)
    redis = producer._connect()  # the same mode rule as `call`: Redis when there is one
    if redis is None:
        note = "embedded mode: the bus keeps no record of calls between processes (set IFBUS_REDIS_URL)"
        emit(as_json, {"ok": True, "server": name, "calls": [], "note": note}, f"No calls known: {note}")
        return
    from bus.ledger import RedisLedger
    from workers.calls import carried

    rows = carried(name, entry, RedisLedger(redis).recent_calls(name))
    if as_json:
        emit(True, {"ok": True, "server": name, "calls": rows}, "")
        return
    if not rows:
        click.echo(f"No calls placed by the bus on {name} in the last 24 h")
        return
    table = [("CALL", "ACTIVE", "PLACED", "FROM -> TO")] + [_call_row(row) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])


def _call_row(row: dict[str, Any]) -> tuple[str, str, str, str]:
    import time

    active = {True: "yes", False: "no", None: "unknown"}[row["active"]]
    placed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["placed_at"]))
    parties = f"{row['from_uri']} -> {row['to_uri']}" if row.get("from_uri") else ""
    return (row.get("sip_call_id") or row["call_id"] or next(iter(row["handle"].values()), "?"), active, placed,
            parties)  # fmt: skip


@cli.command(context_settings=CONTEXT)
@click.option("--hold", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              help="Seconds the call stays up before the hang-up.")  # fmt: skip
@json_option
@guarded
def demo(hold: float, as_json: bool) -> None:
    """Place one real call through the bus on this machine alone, then clean up.

    Starts a private Kamailio (deploy/kamailio/kamailio.cfg) and two SIPp phones on free
    127.0.0.1 ports, registers a server `demo` in a throwaway registry, places a call through the
    bus (a private redis-server and `ifbus worker` when they can start, else embedded), lets it be
    answered, hangs it up and prints the timeline. Everything started is stopped and removed at the
    end, Ctrl-C included. Needs the kamailio and sipp programs (deploy/install.sh installs them).

    \b
    Example:
      ifbus demo
    """
    from producer import demo as demo_

    report = demo_.run(lambda line: click.echo(f"demo: {line}", err=True), hold=hold)
    emit(as_json, report, demo_.render(report))


# ---------------------------------------------------------------- entry points


def main(argv: list[str] | None = None) -> None:
    """`ifbus …`"""
    cli.main(args=argv, prog_name="ifbus")


def if_main(argv: list[str] | None = None) -> None:
    """`if bus …`: the spec's literal grammar; `if` alone is a shell keyword, hence `ifbus`."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "bus":
        emit_failure(wants_json(args), "invalid", 2, "usage: if bus <command> sip … (same as `ifbus …`)")
        click.echo("usage: if bus <add|test|call|hangup|list|remove|worker|schema> sip … (same as `ifbus …`)", err=True)
        sys.exit(2)
    cli.main(args=args[1:], prog_name="if bus")
