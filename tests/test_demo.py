"""The command line: ``python -m dramatiq_abort demo`` and friends, run as users run them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: Seconds a command may take; the demo itself finishes in about one.
TIMEOUT = 60


def run(*args: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line in a fresh interpreter and capture what it prints."""
    return subprocess.run(
        [*(command or [sys.executable, "-m", "dramatiq_abort"]), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def ms(pattern: str, text: str) -> float:
    """The milliseconds that ``pattern`` (with one ``{ms}``) finds in ``text``."""
    match = re.search(pattern.replace("{ms}", r"([\d.]+) ms"), text)
    assert match, f"{pattern!r} not in the demo's output:\n{text}"
    return float(match.group(1))


def test_demo_tells_the_whole_story() -> None:
    """The demo exits 0 and reports a skip, a completion, and three aborts with their timings."""
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "The worker skipped send_newsletter: its actor never ran." in out
    assert "say_hello ran as usual and said 'hello, newcomer'." in out
    caught = ms(r"crunch_numbers caught Abort {ms} after abort\(\)", out)
    stopped = ms(r"returned on its own {ms} after abort\(\)", out)
    deadline = ms(r"got Abort at the deadline, {ms} after abort\(\)", out)
    assert caught < 1000  # pushed, not polled: in practice a few ms
    assert stopped < 1000  # well inside its 1000 ms of grace
    assert 200 <= deadline < 1200  # not before its 200 ms of grace ran out
    for line in (
        "send_newsletter  cancelled while queued   skipped, marked failed",
        "say_hello        left alone               succeeded",
        "crunch_numbers   aborted while running    failed with Abort, not retried",
        "export_rows      aborted, 1000 ms grace   succeeded",
        "rebuild_index    aborted, 200 ms grace    failed with Abort, not retried",
    ):
        assert line in out
    assert "Traceback" not in result.stderr


def test_help_lists_the_demo() -> None:
    """--help exits 0 and lists the demo subcommand."""
    result = run("--help")
    assert result.returncode == 0
    assert "usage: python -m dramatiq_abort" in result.stdout
    assert re.search(r"^\s+demo\s+show cancel, abort", result.stdout, re.MULTILINE)


def test_demo_help() -> None:
    """The --help of the demo subcommand describes it without running it."""
    result = run("demo", "--help")
    assert result.returncode == 0
    assert "StubBroker" in result.stdout
    assert "Summary" not in result.stdout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["frobnicate"],
            "argument COMMAND: invalid choice: 'frobnicate' "
            "(choose from 'demo', 'abort', 'abort-actor', 'status')",
        ),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(args: list[str], error: str) -> None:
    """An unknown or missing subcommand is a usage error: exit 2 with the usage line."""
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m dramatiq_abort")
    assert error in result.stderr


def test_console_script() -> None:
    """The installed dramatiq-abort script is the same command line."""
    script = shutil.which("dramatiq-abort", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the dramatiq-abort script is not installed next to this Python")
    result = run("--help", command=[script])
    assert result.returncode == 0
    assert "usage: dramatiq-abort" in result.stdout
    assert "demo" in result.stdout
