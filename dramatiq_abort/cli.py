"""The ``dramatiq-abort`` command line (also ``python -m dramatiq_abort``).

Commands:

* ``demo``: cancel, abort and graceful abort, in-process, no server needed.
* ``abort ID...``: request the abort (or ``--mode cancel``) of messages, all
  in one backend round trip, and with ``--wait SECONDS`` wait for what
  became of each.
* ``abort-actor ACTOR``: the same for every outstanding message of one
  actor (only actors with the ``track_messages`` option are tracked);
  ``--dry-run`` lists them and aborts nothing.
* ``status ID...``: read where each message's abort stands, and with
  ``--wait SECONDS`` wait until every one is final.

``abort``, ``abort-actor`` and ``status`` talk to the Redis event backend
given by ``--url``, else the ``DRAMATIQ_ABORT_URL`` environment variable,
else ``REDIS_URL``, under the key prefix ``--namespace``
(``RedisBackend(namespace=...)``).
``--json`` prints a JSON array on stdout, one object per id: the status's
``AbortStatus.to_dict()``, or ``{"message_id": ..., "state": null}`` for an
id without one (``abort-actor --dry-run --json`` prints one object instead:
``{"actor": ..., "count": N, "message_ids": [...], "dry_run": true}``).
Errors go to stderr, prefixed ``dramatiq-abort: error:``.

Exit status of ``abort``, ``abort-actor`` and ``status``:

==  =========================================================================
0   Success: every abort was recorded (``abort-actor``: also none to
    make, or a dry run); every status was found (and, with ``--wait``, is
    final).
1   Error: the backend is unreachable, the URL is missing or invalid, or the
    backend stores no statuses (``abort-actor``: tracks no messages).
2   Usage error: argparse's own, or an invalid value (``--timeout -5``).
3   Not found: at least one id has no status (this wins over 4).
4   Timed out: ``--wait`` ran out before every state was final.
==  =========================================================================

Interrupted by Ctrl-C, a command exits with 130.

Each subcommand is a function that adds its parser and sets a handler;
add a new one to :data:`_COMMANDS`.

Decision: the parser is the standard library's :mod:`argparse`.  It is
enough for four subcommands with a handful of options each; click or
typer would be a new dependency of every install for no gain.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the library is imported when a command runs, so --help stays fast
    from .events import EventBackend
    from .middleware import Abortable
    from .status import AbortBatch, AbortStatus

__all__ = ["main"]

#: A subcommand's handler: the parsed arguments in, the exit status out.
Handler = Callable[[argparse.Namespace], int]

#: Exit statuses.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TIMED_OUT = 4
EXIT_INTERRUPTED = 130

#: The environment variables that give the event backend's URL, first wins.
URL_VARIABLES = ("DRAMATIQ_ABORT_URL", "REDIS_URL")

#: The default key prefix, as ``RedisBackend``'s.
DEFAULT_NAMESPACE = "dramatiq:aborts:"

_EXIT_STATUS = """\
exit status:
  0  success: every abort recorded (abort-actor: or none outstanding, or a dry
     run); every status found (and, with --wait, final)
  1  error: backend unreachable, missing or invalid URL, no status storage
     (abort-actor: no message tracking)
  2  usage error: a bad option or value
  3  not found: at least one id has no status (wins over 4)
  4  timed out: --wait ran out before every state was final
"""

_URL_HELP = (
    "Redis URL of the event backend, such as redis://localhost:6379/0 "
    f"(default: ${URL_VARIABLES[0]}, else ${URL_VARIABLES[1]})"
)


class _Failure(Exception):
    """A command failed: print ``message`` as an error and exit with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _wrap(text: str) -> str:
    """``text`` filled to 78 columns: the help formatter keeps descriptions as written."""
    return textwrap.fill(text, 78)


def _error(message: str) -> None:
    text = " ".join(message.split())  # one line, whatever the exception said
    print(f"dramatiq-abort: error: {text}", file=sys.stderr)


# -- demo ----------------------------------------------------------------------


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


# -- argument types ------------------------------------------------------------


def _number(text: str) -> int | float:
    """A number as typed: an ``int`` if it is whole, else a ``float`` (checked later)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text!r}")
    return value


_JSON_HELP = (
    "print a JSON array on stdout, one status object per id "
    '({"message_id": ID, "state": null} for an unknown id)'
)


def _common_options(json_help: str = _JSON_HELP) -> argparse.ArgumentParser:
    """The options every backend command takes; ``json_help`` is the help of ``--json``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", metavar="URL", help=_URL_HELP)
    common.add_argument(
        "--namespace",
        metavar="NS",
        default=DEFAULT_NAMESPACE,
        help="key prefix of the event backend, as RedisBackend(namespace=...) "
        "(default: %(default)s)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        help=json_help,
    )
    return common


# -- shared steps --------------------------------------------------------------


def _check_ids(message_ids: list[str]) -> list[str]:
    """The ids, each once, in order; a blank one is a usage error."""
    from ._request import check_message_id

    try:
        return list(dict.fromkeys(check_message_id(i) for i in message_ids))
    except (TypeError, ValueError) as exc:
        raise _Failure(str(exc), EXIT_USAGE) from exc


def _middleware(args: argparse.Namespace) -> Abortable:
    """The client side of the library, on the backend the options name."""
    if not args.namespace:
        raise _Failure("--namespace must not be empty", EXIT_USAGE)
    if args.url:
        url, source = args.url, "--url"
    else:
        source = next((name for name in URL_VARIABLES if os.environ.get(name)), "")
        if not source:
            msg = (
                "no event backend URL: pass --url URL or set the environment variable "
                f"{URL_VARIABLES[0]} (or {URL_VARIABLES[1]}), such as redis://localhost:6379/0"
            )
            raise _Failure(msg, EXIT_ERROR)
        url = os.environ[source]
    try:
        from . import Abortable

        backend = _backend_from_url(url, args.namespace)
    except ImportError as exc:  # the redis or postgres extra is missing
        raise _Failure(str(exc), EXIT_ERROR) from exc
    except (TypeError, ValueError) as exc:
        raise _Failure(f"{source}: {exc}", EXIT_ERROR) from exc
    return Abortable(backend=backend)


#: URL schemes of a PostgreSQL event backend; any other URL is a Redis one.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _backend_from_url(url: str, namespace: str) -> EventBackend:
    """The event backend a URL names: ``PostgresBackend`` for ``postgresql://``, else Redis.

    The default ``--namespace`` is Redis's key prefix, which is no SQL
    identifier: a PostgreSQL backend then keeps its own default schema.
    """
    from . import backends

    if url.startswith(POSTGRES_SCHEMES):
        import logging

        # psycopg_pool logs every failed connection attempt; the command
        # reports the outage itself, on one line.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        options = {} if namespace == DEFAULT_NAMESPACE else {"namespace": namespace}
        return backends.PostgresBackend.from_url(url, **options)
    return backends.RedisBackend.from_url(url, namespace=namespace)


def _close(middleware: Abortable) -> None:
    close = getattr(middleware.backend, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):  # nothing to keep on the way out
            close()
    client = getattr(middleware.backend, "client", None)
    if client is not None:
        with contextlib.suppress(Exception):  # nothing to keep on the way out
            client.close()


def _read(middleware: Abortable, ids: list[str]) -> list[AbortStatus | None]:
    """Every id's status, in one round trip."""
    from . import BackendUnavailableError, StatusUnavailableError

    try:
        return middleware.abort_statuses(ids)
    except (BackendUnavailableError, StatusUnavailableError) as exc:
        raise _Failure(str(exc), EXIT_ERROR) from exc


def _wait(middleware: Abortable, ids: list[str], seconds: float) -> list[AbortStatus | None]:
    """Read the statuses until each is final or ``seconds`` (one deadline for all) ran out."""
    from .status import wait_final

    return wait_final(lambda pending: _read(middleware, pending), ids, seconds, wait_unknown=True)


def _final(status: AbortStatus | None) -> bool:
    return status is not None and status.final


def _exit_status(statuses: list[AbortStatus | None], waited: bool) -> int:
    if any(status is None for status in statuses):
        return EXIT_NOT_FOUND
    if waited and not all(_final(status) for status in statuses):
        return EXIT_TIMED_OUT
    return EXIT_OK


# -- output --------------------------------------------------------------------


def _print_json(ids: list[str], statuses: list[AbortStatus | None]) -> None:
    data: list[dict[str, Any]] = [
        {"message_id": i, "state": None} if status is None else status.to_dict()
        for i, status in zip(ids, statuses, strict=True)
    ]
    print(json.dumps(data, indent=2))


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _since_request(status: AbortStatus, when: datetime | None) -> str | None:
    if when is None or status.requested_at is None:
        return None
    return f"{_duration((when - status.requested_at).total_seconds())} after the request"


def _details(status: AbortStatus, now: datetime) -> str:
    """The parenthesis of a status line: mode and reason; then what happened, and when."""
    head = status.mode.value + (f", reason: {status.reason}" if status.reason else "")
    state = status.state.value
    what: list[str | None] = []
    if status.actor_name:
        what.append(f"actor {status.actor_name}")
    if state == "requested":
        what.append("no worker has it yet")
        if status.expires_at is not None:
            what.append(f"expires in {_duration((status.expires_at - now).total_seconds())}")
    elif state == "received":
        if status.worker:
            what.append(f"running on {status.worker}")
        since = _since_request(status, status.received_at)
        what.append(f"received {since}" if since else "received")
    elif state == "skipped":
        what += ["never started", _since_request(status, status.ended_at)]
    elif state == "interrupted":
        ended = status.ended_with
        what.append("returned on its own" if ended == "returned" else f"ended with {ended}")
        what.append(_since_request(status, status.ended_at))
    elif state == "too_late":
        what += ["too late to stop it", _since_request(status, status.ended_at)]
    elif state == "expired" and status.expires_at is not None:
        stamp = status.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        what.append(f"no worker saw it before {stamp}")
    tail = ", ".join(part for part in what if part)
    return f"{head}; {tail}" if tail else head


def _print_lines(ids: list[str], statuses: list[AbortStatus | None]) -> None:
    width = max(len(i) for i in ids)
    now = datetime.now(timezone.utc)
    for message_id, status in zip(ids, statuses, strict=True):
        if status is None:
            state, details = "unknown", "no abort status: never requested, or it has expired"
        else:
            state, details = status.state.value, _details(status, now)
        print(f"{message_id:<{width}}  {state:<11}  ({details})")


def _report(args: argparse.Namespace, ids: list[str], statuses: list[AbortStatus | None]) -> int:
    if args.json:
        _print_json(ids, statuses)
    else:
        _print_lines(ids, statuses)
    return _exit_status(statuses, waited=args.wait is not None)


def _guarded(run: Handler) -> Handler:
    """Have ``run`` print its failures as one line on stderr and exit with their status."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _Failure as failure:
            _error(str(failure))
            return failure.code
        except KeyboardInterrupt:
            _error("interrupted")
            return EXIT_INTERRUPTED

    return handler


# -- abort ---------------------------------------------------------------------


class _Request:
    """The checked values of a request: ``ttl``, ``grace`` (keyword arguments) and ``reason``."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ._request import check_reason, to_ms

        try:  # checked before anything is sent, so a bad value aborts nothing
            self.ttl = None if args.ttl is None else to_ms(args.ttl, "--ttl", allow_zero=False)
            self.timeout = None if args.timeout is None else to_ms(args.timeout, "--timeout")
            self.reason = check_reason(args.reason)
        except (TypeError, ValueError) as exc:
            raise _Failure(str(exc), EXIT_USAGE) from exc
        # Without --timeout, abort_timeout is left out: the actor's own grace.
        self.grace: dict[str, int | float] = (
            {} if self.timeout is None else {"abort_timeout": self.timeout}
        )

    def suffix(self) -> str:
        """What a ``requested`` line adds after the id: the reason and the grace."""
        extra = [f"reason: {self.reason}"] if self.reason else []
        if self.timeout is not None:
            extra.append(f"grace {self.timeout} ms")
        return f" ({', '.join(extra)})" if extra else ""


def _send(send: Callable[[], AbortBatch], count: int | None = None) -> AbortBatch:
    """Run ``send``, an abort of ``count`` messages (unknown: ``None``), mapping its errors."""
    from . import BackendUnavailableError, TrackingUnavailableError

    try:
        return send()
    except (TypeError, ValueError) as exc:
        raise _Failure(str(exc), EXIT_USAGE) from exc
    except TrackingUnavailableError as exc:
        raise _Failure(str(exc), EXIT_ERROR) from exc
    except BackendUnavailableError as exc:
        if count == 1:  # the error says it may not have been recorded
            raise _Failure(str(exc), EXIT_ERROR) from exc
        if count is None:  # abort-actor: it may have failed before sending anything
            note = (
                "if it failed while sending the requests, none, some or all of them may "
                "have been recorded: run the command again"
            )
        else:
            note = (
                f"none, some or all of the {count} requests may have been recorded: "
                "run the command again, or read them with the status command"
            )
        raise _Failure(f"{exc} ({note})", EXIT_ERROR) from exc


def _follow(
    args: argparse.Namespace, middleware: Abortable, request: _Request, batch: AbortBatch
) -> int:
    """Print what became of the requests of ``batch``, as ``abort`` does, and the exit status."""
    ids = batch.message_ids
    if args.wait is not None:
        return _report(args, ids, _wait(middleware, ids, args.wait))
    if args.json:
        _print_json(ids, _read(middleware, ids))
    else:
        suffix = request.suffix()
        for message_id in ids:
            print(f"requested {args.mode} of {message_id}{suffix}")
    return EXIT_OK


def _run_abort(args: argparse.Namespace) -> int:
    ids = _check_ids(args.message_ids)
    request = _Request(args)
    middleware = _middleware(args)
    try:
        batch = _send(
            lambda: middleware.abort_many(
                ids,
                abort_ttl=request.ttl,
                mode=args.mode,
                reason=request.reason,
                **request.grace,
            ),
            len(ids),
        )
        return _follow(args, middleware, request, batch)
    finally:
        _close(middleware)


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    """The options of a request: --mode, --timeout, --ttl, --reason and --wait."""
    parser.add_argument(
        "--mode",
        choices=["abort", "cancel"],
        default="abort",
        help="abort: stop it queued or running; cancel: only if it has not started "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_number,
        metavar="MS",
        help="grace in milliseconds before a running message gets Abort "
        "(default: the actor's own abort_timeout, else none)",
    )
    parser.add_argument(
        "--ttl",
        type=_number,
        metavar="MS",
        help="milliseconds the request stays valid for a message that has not started "
        "(default: 90000)",
    )
    parser.add_argument("--reason", metavar="TEXT", help="why, shown in the status and the Abort")
    parser.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="then wait up to SECONDS (all ids together) for each final state, and print it",
    )


def _add_abort(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "abort",
        parents=[_common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="request the abort (or cancel) of messages by id",
        description=_wrap(
            "Request the abort of each message: a worker skips it if it has not started, "
            "and (mode abort) raises Abort in it if it is running.  All ids are requested "
            "in one round trip.  With --wait, wait for what became of each and print its "
            "status."
        ),
        epilog=(
            "examples:\n"
            "  dramatiq-abort abort 8f3c2a1e-... --reason 'user left' --wait 10\n"
            "  DRAMATIQ_ABORT_URL=redis://localhost:6379/0 "
            "dramatiq-abort abort ID1 ID2 --mode cancel --json\n\n" + _EXIT_STATUS
        ),
    )
    parser.add_argument("message_ids", nargs="+", metavar="ID", help="the id of a message")
    _add_request_options(parser)
    parser.set_defaults(handler=_guarded(_run_abort))


# -- abort-actor ---------------------------------------------------------------

#: How many ids a dry run lists before it only counts the rest.
_DRY_RUN_LISTED = 20


def _print_dry_run(args: argparse.Namespace, batch: AbortBatch) -> None:
    ids = batch.message_ids
    if args.json:
        data = {"actor": args.actor, "count": len(ids), "message_ids": ids, "dry_run": True}
        print(json.dumps(data, indent=2))
        return
    noun = "message" if len(ids) == 1 else "messages"
    print(f"{len(ids)} {noun} of actor {args.actor} outstanding")
    for message_id in ids[:_DRY_RUN_LISTED]:
        print(message_id)
    if len(ids) > _DRY_RUN_LISTED:
        print(f"... and {len(ids) - _DRY_RUN_LISTED} more")


def _run_abort_actor(args: argparse.Namespace) -> int:
    request = _Request(args)
    if not args.actor.strip():
        raise _Failure("ACTOR must be an actor's name, not blank", EXIT_USAGE)
    if args.dry_run and args.wait is not None:
        raise _Failure("--wait has nothing to wait for with --dry-run", EXIT_USAGE)
    middleware = _middleware(args)
    try:
        batch = _send(
            lambda: middleware.abort_actor(
                args.actor,
                abort_ttl=request.ttl,
                mode=args.mode,
                reason=request.reason,
                dry_run=args.dry_run,
                **request.grace,
            )
        )
        if args.dry_run:
            _print_dry_run(args, batch)
            return EXIT_OK
        if not batch:
            print("[]" if args.json else f"no outstanding messages of actor {args.actor}")
            return EXIT_OK
        return _follow(args, middleware, request, batch)
    finally:
        _close(middleware)


def _add_abort_actor(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    json_help = (
        f"{_JSON_HELP}; with --dry-run, one object: "
        '{"actor": ACTOR, "count": N, "message_ids": [...], "dry_run": true}'
    )
    parser = commands.add_parser(
        "abort-actor",
        parents=[_common_options(json_help)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="request the abort (or cancel) of every outstanding message of an actor",
        description=_wrap(
            "Request the abort of every outstanding message of one actor (pending, "
            "delayed, waiting for a retry, or running), in one round trip, as abort does "
            "for ids.  It finds only the messages of actors whose track_messages option is "
            "on (Abortable(track_messages=True), or the actor's own option), which the "
            "event backend tracks from when they are sent until a worker is done with "
            "them.  With --dry-run, list them and abort nothing."
        ),
        epilog=(
            "examples:\n"
            "  dramatiq-abort abort-actor resize_image --dry-run\n"
            "  dramatiq-abort abort-actor resize_image --reason 'bad deploy' --wait 30\n\n"
            + _EXIT_STATUS
        ),
    )
    parser.add_argument("actor", metavar="ACTOR", help="the name of the actor")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many messages (and which) would be aborted; abort nothing",
    )
    _add_request_options(parser)
    parser.set_defaults(handler=_guarded(_run_abort_actor))


# -- status --------------------------------------------------------------------


def _run_status(args: argparse.Namespace) -> int:
    ids = _check_ids(args.message_ids)
    middleware = _middleware(args)
    try:
        if args.wait is None:
            statuses = _read(middleware, ids)
        else:
            statuses = _wait(middleware, ids, args.wait)
        return _report(args, ids, statuses)
    finally:
        _close(middleware)


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "status",
        parents=[_common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="show where the abort of messages stands",
        description=_wrap(
            "Print the abort status of each message: requested, received (running, in its "
            "grace), or final: skipped, interrupted, too_late, expired.  All ids are read in "
            "one round trip."
        ),
        epilog=(
            "examples:\n"
            "  dramatiq-abort status 8f3c2a1e-...\n"
            "  dramatiq-abort status ID1 ID2 --wait 30 --json "
            "--url redis://localhost:6379/0\n\n" + _EXIT_STATUS
        ),
    )
    parser.add_argument("message_ids", nargs="+", metavar="ID", help="the id of a message")
    parser.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="wait up to SECONDS until every state is final",
    )
    parser.set_defaults(handler=_guarded(_run_status))


#: Functions that each add one subcommand.
_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_demo,
    _add_abort,
    _add_abort_actor,
    _add_status,
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run a command with --help for its options.\n\n" + _EXIT_STATUS,
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
        The exit status: 0 on success, 1 on an error, 2 on a usage error
        (argparse's own are raised as ``SystemExit``), 3 when an id has no
        status, 4 when ``--wait`` ran out; see the module's docstring.

    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
