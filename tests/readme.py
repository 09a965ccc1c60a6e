"""The README's examples, as the tests that run them read them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def block(heading: str, lang: str = "python", index: int = 0) -> str:
    """The ``index``-th ``lang`` code block of the README section ``### heading``, as written there."""
    section = README.read_text().split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)[index]
