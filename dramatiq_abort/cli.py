"""The ``dramatiq-abort`` command line (also ``python -m dramatiq_abort``).

Each subcommand is a function that adds its parser and sets a handler;
add a new one to :data:`_COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

#: A subcommand's handler: the parsed arguments in, the exit status out.
Handler = Callable[[argparse.Namespace], int]


def _run_demo(args: argparse.Namespace) -> int:
    from . import _demo  # imported here so ``--help`` stays fast

    return _demo.run()


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="show cancel, abort and graceful abort in-process (no server needed)",
        description=(
            "Run a worker in this process on dramatiq's StubBroker and the in-memory "
            "StubBackend: cancel a queued message, abort a running one, abort two "
            "gracefully, and let one complete, printing how long each abort took."
        ),
    )
    parser.set_defaults(handler=_run_demo)


#: Functions that each add one subcommand.
_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_demo,
]


def _prog() -> str:
    if os.path.basename(sys.argv[0]) == "__main__.py":
        return "python -m dramatiq_abort"
    return "dramatiq-abort"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Cancel queued and abort running dramatiq messages.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments after the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0 on success.  A usage error exits with status 2
        (raised by :mod:`argparse` as ``SystemExit``).

    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
