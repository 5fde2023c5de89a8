"""How every `ifbus` outcome is printed: one line for people, or one JSON object for scripts.

One home for the CLI's output shapes, shared by the click commands (producer/cli.py) and the
click-free fast path (producer/entry.py), so a command answers byte for byte the same either way.
Nothing here imports click unless a line needs what only click.echo does (below).
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from bus.errors import BusError


def echo(text: str, err: bool = False) -> None:
    """click.echo(text, err=err) without importing click for ordinary text.

    click.echo writes the text and a newline, then flushes; beyond that it strips ANSI codes when the
    stream is not a terminal and re-wraps a stream whose encoding is ASCII. Text with an escape
    character, or such a stream, is handed to click itself, so both paths print the same bytes.
    """
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # no standard stream at all: click prints nothing either
        return
    if "\x1b" in text or not _usable_as_is(stream):
        import click

        click.echo(text, err=err)
        return
    stream.write(text + "\n")
    stream.flush()


def _usable_as_is(stream: Any) -> bool:
    """click.echo's test for writing to a text stream unchanged: an encoding and an error handler set,
    and the encoding not ASCII (click re-wraps such a stream to write UTF-8)."""
    encoding = getattr(stream, "encoding", None)
    if encoding is None or getattr(stream, "errors", None) is None:
        return False
    try:
        return codecs.lookup(encoding).name != "ascii"
    except LookupError:
        return True


def dumps(obj: Any, **options: Any) -> str:
    """json.dumps, imported on first use: `--help` and a plain `list` print no JSON."""
    import json

    return json.dumps(obj, **options)


def emit(as_json: bool, obj: dict[str, Any], line: str) -> None:
    """A success: one line for people, or one JSON object (with its exit code, 0) for scripts."""
    echo(dumps({"exit_code": 0, **obj}, ensure_ascii=False) if as_json else line)


def emit_failure(as_json: bool, outcome: str, exit_code: int, message: str) -> None:
    """A failure the bus did not class (click's usage errors, Ctrl-C): under --json the same shape as
    `fail`, then the message on stderr."""
    if as_json:
        echo(dumps({"ok": False, "outcome": outcome, "exit_code": exit_code, "message": message}))


def fail(exc: BusError, as_json: bool) -> NoReturn:
    if as_json:
        echo(
            dumps(
                {
                    "ok": False,
                    "outcome": exc.outcome.value,
                    "exit_code": exc.exit_code,
                    "message": exc.message,
                    **exc.details,
                },
                ensure_ascii=False,
            )
        )
    echo(exc.message if exc.message.startswith(("Not found", "Call failed")) else f"Error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def interrupted(as_json: bool) -> NoReturn:
    """Ctrl-C: exit 130, as a shell reports a process the signal ended."""
    emit_failure(as_json, "interrupted", 130, "Interrupted")
    echo("Interrupted", err=True)
    sys.exit(130)


def guard(run: Callable[[], None], as_json: bool, passthrough: tuple[type[BaseException], ...] = ()) -> None:
    """Run a command, turning every failure into a message and an exit code: a user never sees a
    traceback. `passthrough` are the exceptions the caller's framework handles itself (click's)."""
    try:
        run()
    except BusError as exc:
        fail(exc, as_json)
    except KeyboardInterrupt:
        interrupted(as_json)
    except (SystemExit, BrokenPipeError, *passthrough):  # the reader left: the caller's reader_left
        raise
    except Exception as exc:  # a bug: still no traceback on a user's terminal
        fail(BusError(f"internal error ({type(exc).__name__}): {exc}"), as_json)


def reader_left() -> NoReturn:
    """`ifbus list sip | head -1`: the reader left, there is no one to tell."""
    sys.stderr.close()
    sys.exit(1)
