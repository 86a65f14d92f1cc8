"""The built documentation site renders: its home and API pages, in headless Chromium.

``nox -s docs`` builds the HTML into docs/_build/html (warnings are errors),
runs the pages' examples, then runs this file with ``DOCS_BUILD_DIR`` set to
docs/_build.  Without that variable (as in the ``tests`` session, which
has no Sphinx) the whole file skips: ``nox -s docs`` is where it runs.  To
run it by hand on a build of your own::

    DOCS_BUILD_DIR=docs/_build pytest tests/test_docs_site.py

Each page is rendered once by Debian's ``chromium`` (``.ci/run`` installs
it): its DOM, as the browser built it, and a 1280x900 PNG screenshot saved
as ``$DOCS_BUILD_DIR/screenshots/<page>.png``.  Without Chromium the tests
skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

import dramatiq_abort
from conftest import require
from dramatiq_abort import backends

if not os.environ.get("DOCS_BUILD_DIR"):
    pytest.skip(
        "the docs site is checked by nox -s docs, which builds it and sets DOCS_BUILD_DIR",
        allow_module_level=True,
    )

DOCS = Path(__file__).resolve().parent.parent / "docs"
BUILD = Path(os.environ["DOCS_BUILD_DIR"]).resolve()
HTML = BUILD / "html"
SCREENSHOTS = BUILD / "screenshots"
#: The size of the browser window, and so of each screenshot.
WINDOW = (1280, 900)
#: Seconds one Chromium run may take (it takes one or two).
TIMEOUT = 60
#: The pages checked, each with the start of its <title>.
PAGES = {"index": "dramatiq-abort", "api": "API reference - dramatiq-abort"}
#: What a page shows when Sphinx or docutils could not render something.
ERROR_MARKERS = (
    'class="system-message"',
    'class="problematic"',
    "System Message:",
    "Traceback (most recent call last)",
    "build error",
    "WARNING:",
    "ERROR:",
)


@dataclass(frozen=True)
class Rendered:
    """One page as Chromium rendered it."""

    dom: str
    screenshot: Path


class SidebarLinks(HTMLParser):
    """Collects the text of every link in furo's navigation tree (``div.sidebar-tree``)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._depth = 0  # open divs inside the tree; 0 outside it
        self._link: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Enter the tree, a div inside it, or a link inside it."""
        classes = (dict(attrs).get("class") or "").split()
        if tag == "div" and (self._depth or "sidebar-tree" in classes):
            self._depth += 1
        elif tag == "a" and self._depth:
            self._link = []

    def handle_endtag(self, tag: str) -> None:
        """Leave a div of the tree, or end a link and keep its text."""
        if tag == "div" and self._depth:
            self._depth -= 1
        elif tag == "a" and self._link is not None:
            self.texts.append(" ".join("".join(self._link).split()))
            self._link = None

    def handle_data(self, data: str) -> None:
        """Gather the text of the link being read."""
        if self._link is not None:
            self._link.append(data)


def chromium_command() -> list[str]:
    """Headless Chromium with a fresh profile's worth of quiet flags, minus the profile."""
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    require(Path(binary).exists(), "Chromium is not installed (Debian: apt-get install chromium)")
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ]


def run_chromium(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run Chromium once with its own throwaway profile directory."""
    with tempfile.TemporaryDirectory(prefix="docs-chromium-") as profile:
        result = subprocess.run(
            [*command, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert result.returncode == 0, f"chromium {args} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    """Every page of PAGES rendered by Chromium: its DOM and a PNG screenshot."""
    command = chromium_command()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = {}
    for name in PAGES:
        page = HTML / f"{name}.html"
        assert page.is_file(), f"{page} was not built: run nox -s docs"
        url = page.as_uri()
        dom = run_chromium(command, "--dump-dom", url).stdout
        screenshot = SCREENSHOTS / f"{name}.png"
        screenshot.unlink(missing_ok=True)
        run_chromium(command, f"--screenshot={screenshot}", url)
        pages[name] = Rendered(dom=dom, screenshot=screenshot)
    return pages


def toctree_pages() -> dict[str, str]:
    """The pages the home page's toctrees list, each with the title its Markdown gives it."""
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    entries = []
    for block in re.findall(r"```\{toctree\}\n(.*?)```", index, flags=re.DOTALL):
        entries += [line.strip() for line in block.splitlines()]
    titles = {}
    for entry in entries:
        if not entry or entry.startswith(":"):
            continue  # a blank line or an option such as :maxdepth:
        source = (DOCS / f"{entry}.md").read_text(encoding="utf-8")
        heading = re.search(r"^# (.+)$", source, flags=re.MULTILINE)
        assert heading is not None, f"docs/{entry}.md has no '# title' line"
        titles[entry] = heading.group(1).replace("`", "").strip()
    return titles


@pytest.mark.parametrize("name", PAGES)
def test_page_title(rendered: dict[str, Rendered], name: str) -> None:
    """The page's <title> names the page and the project."""
    title = re.search(r"<title>(.*?)</title>", rendered[name].dom, flags=re.DOTALL)
    assert title is not None, f"{name}.html has no <title>"
    assert title.group(1).strip().startswith(PAGES[name]), title.group(1)


def test_toctree_lists_the_guide_and_the_reference() -> None:
    """The home page's toctrees name every page of the guide, the API and the architecture."""
    expected = {"getting-started", "concepts", "toolkit", "async", "backends", "operations"}
    expected |= {"migration", "performance", "api", "architecture"}
    assert expected <= set(toctree_pages())


@pytest.mark.parametrize("name", PAGES)
def test_sidebar_lists_every_page(rendered: dict[str, Rendered], name: str) -> None:
    """The navigation sidebar links to every page of the toctrees, by its title."""
    links = SidebarLinks()
    links.feed(rendered[name].dom)
    missing = set(toctree_pages().values()) - set(links.texts)
    assert not missing, f"the sidebar of {name}.html lacks {missing}; it has {links.texts}"


@pytest.mark.parametrize("name", PAGES)
def test_no_build_error_markers(rendered: dict[str, Rendered], name: str) -> None:
    """The page shows no docutils system message, Sphinx warning or traceback."""
    dom = rendered[name].dom
    found = [marker for marker in ERROR_MARKERS if marker.lower() in dom.lower()]
    assert not found, f"{name}.html shows {found}"


def test_api_page_documents_every_public_name(rendered: dict[str, Rendered]) -> None:
    """The API page has an entry for each name of dramatiq_abort.__all__ and of the backends."""
    dom = rendered["api"].dom
    anchors = [
        f'id="module-dramatiq_abort.{name}"'
        if name == "backends"
        else f'id="dramatiq_abort.{name}"'
        for name in dramatiq_abort.__all__
    ]
    anchors += [f'id="dramatiq_abort.backends.{name}"' for name in backends.__all__]
    missing = [anchor for anchor in anchors if anchor not in dom]
    assert not missing, f"the API page lacks {missing}"


@pytest.mark.parametrize("name", PAGES)
def test_screenshot_is_a_plausible_picture(rendered: dict[str, Rendered], name: str) -> None:
    """The screenshot is a window-sized PNG with text on it, not a blank or broken page."""
    from PIL import Image

    path = rendered[name].screenshot
    assert path.stat().st_size > 20_000, f"{path} is only {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == WINDOW
        pixels = image.convert("RGB")
    colours = pixels.getcolors(maxcolors=WINDOW[0] * WINDOW[1])
    assert colours is not None
    background = max(count for count, _ in colours)
    drawn = WINDOW[0] * WINDOW[1] - background
    assert len(colours) > 50, f"{path} has only {len(colours)} colours"
    assert drawn > 0.03 * WINDOW[0] * WINDOW[1], (
        f"{path}: only {drawn} pixels differ from the background"
    )
