"""The examples of the README and the documentation guide, as the tests that run them read them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def section(heading: str) -> str:
    """The text under the heading ``heading`` (any level) of the README or a documentation page, up to the next
    heading of level 2 (a page's sections; a line of a code block starts with one ``#`` at most)."""
    for page in PAGES:
        parts = re.split(rf"^#{{1,3}} {re.escape(heading)}\n", page.read_text(), maxsplit=1, flags=re.M)
        if len(parts) == 2:
            return re.split(r"^## ", parts[1], maxsplit=1, flags=re.M)[0]
    raise KeyError(f"no section {heading!r} in the README or docs/")


def block(heading: str, lang: str = "python", index: int = 0) -> str:
    """The ``index``-th ``lang`` code block of the section ``heading``, as written there."""
    return re.findall(rf"```{lang}\n(.*?)```", section(heading), re.S)[index]


def text() -> str:
    """The README and every documentation page, one after another."""
    return "\n".join(page.read_text() for page in PAGES)
