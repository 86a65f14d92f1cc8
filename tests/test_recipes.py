"""Every recipe in recipes/ runs as a program and shows what it says it shows.

Each recipe runs in a subprocess twice: in memory (``REDIS_URL`` removed
from its environment) and on the tests' Redis (``REDIS_URL`` pointing at
the event-backend database).  A recipe asserts its own story and exits
with status 1 when it did not happen; the tests check the exit status, the
recipe's closing ``<name>: OK`` line and one line of its story, and, on
Redis, that it deleted the keys of its namespace.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKEND_DB

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(path for path in RECIPES_DIR.glob("*.py") if not path.name.startswith("_"))
#: Seconds a recipe may take before the test gives up on it (they take a few).
TIMEOUT = 60

#: One line of each recipe's story, printed only when that story happened.
KEY_LINES = {
    "abort_from_another_process": "crunch (pid",
    "async_actor": "follow_job: aborted while awaiting",
    "async_stream": "copy_stream: stopping cleanly at a batch boundary",
    "cancel_delayed": "bob's reminder was skipped: its actor never ran",
    "cancel_group": "main: outcomes: {'interrupted': 2, 'skipped': 6}",
    "cleanup_on_abort": "on_abort: removed dataset.bin.part",
    "graceful_stop": "stopping cleanly after",
    "guarded_subprocess": "the child wrote its goodbye: 'interrupted at step",
    "shielded_write": "Abort arrived after snapshot 3 was saved whole",
    "stop_pipeline": "main: parse: skipped",
}
#: What a recipe that needs Redis prints when there is none.
NEEDS_REDIS = "this recipe needs Redis"
#: The recipe that needs Redis even when REDIS_URL is not set.
REDIS_ONLY = {"abort_from_another_process"}


def run_recipe(path: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one recipe the way its docstring says, in a subprocess."""
    return subprocess.run(
        [sys.executable, str(path)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def check_story(path: Path, result: subprocess.CompletedProcess[str]) -> None:
    """The recipe exited 0, printed its OK line and the key line of its story."""
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, output
    assert f"{path.stem}: OK" in result.stdout, output
    assert KEY_LINES[path.stem] in result.stdout, output


def local_redis_answers() -> bool:
    """Whether Redis answers on 127.0.0.1:6379, which the Redis-only recipe falls back to."""
    try:
        import redis
    except ImportError:
        return False
    client = redis.Redis(socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
    return True


def test_every_recipe_has_a_key_line() -> None:
    """Each recipe in recipes/ has a key line here, so no recipe goes unchecked."""
    assert RECIPES, f"no recipes found in {RECIPES_DIR}"
    assert sorted(path.stem for path in RECIPES) == sorted(KEY_LINES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_recipe_docstring(path: Path) -> None:
    """Each recipe opens with a docstring that says how to run it."""
    source = path.read_text(encoding="utf-8")
    assert source.startswith('"""'), f"{path.name} does not open with a docstring"
    docstring = source.split('"""', 2)[1]
    assert f"python recipes/{path.name}" in docstring


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_recipe_in_memory(path: Path, tmp_path: Path) -> None:
    """The recipe runs on the StubBroker and StubBackend when REDIS_URL is not set."""
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    result = run_recipe(path, env, tmp_path)
    if path.stem in REDIS_ONLY and not local_redis_answers():
        assert result.returncode == 0, result.stderr
        assert NEEDS_REDIS in result.stdout
        assert len(result.stdout.splitlines()) == 1, result.stdout
        return
    check_story(path, result)
    if path.stem not in REDIS_ONLY:
        assert "StubBroker" in result.stdout.splitlines()[0]


@pytest.mark.redis
@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_recipe_on_redis(path: Path, tmp_path: Path, redis_base_url: str) -> None:
    """The recipe runs on RedisBroker and RedisBackend from REDIS_URL, and cleans up its keys."""
    import redis

    url = f"{redis_base_url}/{BACKEND_DB}"
    env = {**os.environ, "REDIS_URL": url}
    result = run_recipe(path, env, tmp_path)
    check_story(path, result)
    found = re.search(r"\(namespace (\S+)\)", result.stdout.splitlines()[0])
    assert found is not None, result.stdout
    client: Any = redis.Redis.from_url(url)
    try:
        left = list(client.scan_iter(match=found.group(1) + ":*"))
    finally:
        client.close()
    assert not left, f"{path.name} left keys behind: {left}"
