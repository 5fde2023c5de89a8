"""The `ifbus` and `if bus` programs: the two lines shell loops run most go around click.

Importing click costs ~4x a bare Python start, and issue 16 allows `ifbus --help` and
`ifbus list sip` at most 3x. So exactly these lines take a fast path:

- `list sip` and `list sip --json`: producer.listing.list_servers, the function the click command
  calls, under the same guard (producer.output), so output and exit codes are the same bytes;
- `--help` / `-h` alone: the text click rendered last time, from producer.helpcache.

Everything else goes to click unchanged: any other word or order, a shell-completion request
(`_IFBUS_COMPLETE`), and a `--help` whose cached text is missing or stale (click renders it, and
it is kept for next time). tests/test_fast_path.py compares both paths byte for byte.
"""

from __future__ import annotations

import os
import sys

LIST = (["list", "sip"], ["list", "sip", "--json"])
HELP = (["--help"], ["-h"])


def main(argv: list[str] | None = None) -> None:
    """`ifbus …`"""
    args = list(sys.argv[1:] if argv is None else argv)
    if not fast(args, "ifbus"):
        from producer.cli import main as click_main

        click_main(args)


def if_main(argv: list[str] | None = None) -> None:
    """`if bus …`"""
    args = list(sys.argv[1:] if argv is None else argv)
    if not (args[:1] == ["bus"] and fast(args[1:], "if bus")):
        from producer.cli import if_main as click_if_main

        click_if_main(args)


def fast(args: list[str], prog: str) -> bool:
    """Answer `args` without click when it is one of the fast lines; False: click must."""
    if any(name.startswith("_") and name.endswith("_COMPLETE") for name in os.environ):
        return False  # click's shell completion (`_IFBUS_COMPLETE=…`) reads its own variable
    if args in LIST:
        from producer.listing import list_servers
        from producer.output import guard, reader_left

        as_json = args[-1] == "--json"
        try:
            guard(lambda: list_servers(as_json), as_json)
        except BrokenPipeError:
            reader_left()
        return True
    if args in HELP:
        from producer import helpcache

        text = helpcache.lookup(prog)
        if text is None:
            return False
        from producer.output import echo, reader_left

        try:
            echo(text)
        except BrokenPipeError:
            reader_left()
        return True
    return False
