"""Automation: ``nox`` runs the default sessions (tests, lint, typecheck).

The test sessions install the package as a built wheel, the way users get it.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against real Redis, RabbitMQ and dramatiq workers."""
    session.install(".[redis]", *_group("tests"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Check the package and tests/typing with mypy --strict."""
    session.install(".[redis]", *_group("typecheck"))
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo on the in-memory backend (no server needed)."""
    session.install(".")
    session.run("python", "-m", "dramatiq_abort", "demo")


@nox.session
def recipes(session: nox.Session) -> None:
    """Run every recipe in recipes/, in memory and on Redis, through tests/test_recipes.py."""
    session.install(".[redis]", *_group("tests"))
    session.run("pytest", "tests/test_recipes.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Print the benchmark figures: abort latency, graceful deadlines, Redis commands."""
    session.install(".[redis]")
    for script in sorted(Path("benchmarks").glob("*.py")):
        if not script.name.startswith("_"):
            session.run("python", str(script), *session.posargs)
