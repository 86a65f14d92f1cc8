"""Automation: ``nox`` runs the default sessions (tests, faults, gevent, lint, typecheck, docs).

The test sessions install the package as a built wheel, the way users get it.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "faults", "gevent", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against real Redis, RabbitMQ and dramatiq workers."""
    session.install(".[redis]", *_group("tests"))
    session.run("pytest", "--ignore=tests/faults", *session.posargs)


@nox.session
def faults(session: nox.Session) -> None:
    """Run tests/faults: real worker processes through outages, kills, races, bad input."""
    session.install(".[redis,gevent]", *_group("tests"))
    session.run("pytest", "tests/faults", *session.posargs)


@nox.session
def gevent(session: nox.Session) -> None:
    """Run the test suite under gevent's monkey-patching, as dramatiq-gevent runs workers.

    tests/run_gevent.py patches the standard library, then starts pytest, the
    way dramatiq runs its own suite's gevent variant: every worker thread the
    tests start is a greenlet.  Tests marked ``threads_only`` are skipped,
    each with its reason.  tests/faults/test_gevent_worker.py (the real
    dramatiq-gevent command) runs in the faults session.
    """
    session.install(".[redis,gevent]", *_group("tests"))
    session.run(
        "python",
        "tests/run_gevent.py",
        "--ignore=tests/faults",
        "--ignore=tests/test_docs_site.py",
        *session.posargs,
    )


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
def docs(session: nox.Session) -> None:
    """Build docs/ with Sphinx (warnings are errors), run its examples, check the rendered pages.

    The HTML goes to docs/_build/html.  The doctest builder runs every example
    of the pages (the recipes they include run in the tests session).  Then
    tests/test_docs_site.py, given the build directory in ``DOCS_BUILD_DIR``,
    screenshots the home and API pages with headless Chromium into
    docs/_build/screenshots and checks them; without that variable (as in the
    tests session) it skips.  ``-E`` rereads every page, so a warning shows on
    every run, not only on the run that changed its page.
    """
    session.install(".[redis,prometheus,postgres]", *_group("tests"), *_group("docs"))
    build = Path("docs", "_build")
    for builder in ("html", "doctest"):
        session.run(
            "sphinx-build",
            *("-W", "--keep-going", "-E", "-b", builder),
            *("-d", str(build / "doctrees")),
            "docs",
            str(build / builder),
        )
    session.run(
        "pytest",
        "tests/test_docs_site.py",
        *session.posargs,
        env={"DOCS_BUILD_DIR": str(build.resolve())},
    )


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
    """Print the benchmark figures, and compare them with dramatiq-abort 1.2.1.

    Without arguments every script in benchmarks/ runs with its defaults (about 15
    minutes); ``nox -s bench -- compare --quick`` runs one script with the arguments
    after its name.  compare.py keeps its two virtualenvs (this project and 1.2.1)
    in nox's cache directory.
    """
    session.install(".[redis,postgres,gevent]", *_group("bench"))
    scripts = {
        path.stem: path
        for path in sorted(Path("benchmarks").glob("*.py"))
        if not path.name.startswith("_")
    }
    args = list(session.posargs)
    if args:
        name = Path(args.pop(0)).stem
        if name not in scripts:
            session.error(
                f"name a benchmark first, one of {', '.join(scripts)}, then its arguments: "
                f"nox -s bench -- compare --quick (not {session.posargs[0]!r})"
            )
        scripts = {name: scripts[name]}
    for name, script in scripts.items():
        extra = ["--venv-dir", str(session.cache_dir / "compare")] if name == "compare" else []
        session.run("python", str(script), *extra, *args)
