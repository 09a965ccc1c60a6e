"""The site's generated pages (a mkdocs hook, ``hooks:`` in mkdocs.yml): what the code says, so it cannot drift.

- ``index.md`` is the README, its ``docs/`` links made relative to the site;
- ``<!-- configuration -->`` becomes one table per configuration section, read from the dataclasses of
  ``itra_tune/config.py``: each key, its default and the comment beside or above it;
- ``<!-- cli: MODULE -->`` becomes the ``--help`` of that module's ``parser()``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import os
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def readme() -> str:
    """The README as the site's home page: its links into ``docs/`` point at the site's pages."""
    return re.sub(r"\]\(docs/", "](", (ROOT / "README.md").read_text())


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class's source: the lines of ``#`` just above it, then the one beside it."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        field = re.match(r"([a-z_][a-z0-9_]*)\s*:", text)
        if field:
            beside = text.split("  # ", 1)[1] if "  # " in text else ""
            out[field.group(1)] = " ".join(above + [beside]).strip()
        above = []
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def configuration() -> str:
    """One table per section of ``itra_tune.config.Config``: key, default, and what the code's comment says."""
    from itra_tune import config

    out = []
    top = []
    for section in dataclasses.fields(config.Config):
        cls = section.type if isinstance(section.type, type) else getattr(config, str(section.type), None)
        if cls is None or not dataclasses.is_dataclass(cls):
            top.append(section)
            continue
        notes = _comments(cls)
        doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        out += [f"## `{section.name}`", "", *([doc, ""] if doc else []), "| key | default | what it does |",
                "|---|---|---|"]
        out += [f"| `{section.name}.{f.name}` | `{_default(f)!r}` | {_cell(notes.get(f.name, ''))} |"
                for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        out.append("")
    notes = _comments(config.Config)
    out += ["## Top level", "", "| key | default | what it does |", "|---|---|---|"]
    out += [f"| `{f.name}` | `{_default(f)!r}` | {_cell(notes.get(f.name, ''))} |" for f in top]
    return "\n".join(out) + "\n"


def command_help(module: str) -> str:
    """The ``--help`` of ``module.parser()``, at 100 columns, as a code block."""
    if str(ROOT) not in sys.path:  # pipelines/ is a folder of the repository, not of the package
        sys.path.insert(0, str(ROOT))
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        buf = io.StringIO()
        with redirect_stdout(buf):
            importlib.import_module(module).parser().print_help()
    finally:
        os.environ.pop("COLUMNS") if columns is None else os.environ.__setitem__("COLUMNS", columns)
    return "```text\n" + buf.getvalue().rstrip() + "\n```\n"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "index.md":
        return readme()
    markdown = markdown.replace("<!-- configuration -->", configuration())
    return re.sub(r"<!-- cli: ([\w.]+) -->", lambda m: command_help(m.group(1)), markdown)


def on_config(config: Any, **_: Any) -> Any:
    # the README is the home page: a change to it rebuilds the site under `mkdocs serve`
    config.watch.append(str(ROOT / "README.md"))
    return config
