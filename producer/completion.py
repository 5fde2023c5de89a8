"""Shell completion for `ifbus`: server names from the registry, types, `--auth`/`--opt` keys.

click runs these when the shell asks (`_IFBUS_COMPLETE=bash_complete …`, set up as docs/cli.md
says); they must be fast and must never fail: a broken registry completes nothing rather than
printing an error into the user's prompt. Only the registry file and the vendor catalogue are read
(no Redis, no pydantic), so a TAB costs about what `ifbus list sip` costs.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from bus.vendors import TYPES, VENDORS


def _entries() -> dict[str, Any]:
    try:
        from bus.registry import open_registry

        return open_registry().entries()
    except Exception:  # completion must never print an error into a prompt
        return {}


def kinds(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem("sip")] if "sip".startswith(incomplete) else []


def server_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Registered names starting with what was typed, each with its type as the help text (zsh and
    fish show it)."""
    return [
        CompletionItem(name, help=entry.type)
        for name, entry in sorted(_entries().items())
        if name.startswith(incomplete)
    ]


def types(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(t, help=VENDORS[t].label) for t in (*TYPES, "auto") if t.startswith(incomplete)]


def _type_in(ctx: click.Context) -> str | None:
    """The server type the command line is about: `--type`/positional TYPE of `add`, else the type of
    the server NAME already names in the registry."""
    params = ctx.params
    for key in ("type_opt", "type_arg"):
        if params.get(key) in VENDORS:
            return str(params[key])
    name = params.get("name")
    entry = _entries().get(name) if isinstance(name, str) else None
    return entry.type if entry is not None else None


def _pairs(keys: list[str], incomplete: str) -> list[CompletionItem]:
    if "=" in incomplete:  # the value is the user's own
        return []
    return [CompletionItem(f"{key}=", help="") for key in dict.fromkeys(keys) if key.startswith(incomplete)]


def auth_keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    type_ = _type_in(ctx)
    keys = list(VENDORS[type_].auth_keys) if type_ else [k for v in VENDORS.values() for k in v.auth_keys]
    return _pairs(keys, incomplete)


def option_keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The `--opt` keys of the server's type (its catalogue defaults), or every type's when unknown."""
    type_ = _type_in(ctx)
    chosen = [VENDORS[type_]] if type_ else list(VENDORS.values())
    return _pairs(sorted({key for v in chosen for key in v.defaults}), incomplete)


def call_words(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """`from=` and `to=` until given (their values are the user's)."""
    given = {word.partition("=")[0] for word in ctx.params.get("words") or ()}
    return _pairs([k for k in ("from", "to") if k not in given], incomplete)


def hangup_words(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    given = {word.partition("=")[0] for word in ctx.params.get("words") or ()}
    return _pairs([k for k in ("call_id",) if k not in given], incomplete)
