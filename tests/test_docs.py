"""The README and the documentation site: a short README whose links all resolve, references generated from the
code (every configuration key documented), and the site built with ``mkdocs build --strict``."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from itra_tune import config

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_short_and_every_link_in_it_resolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 15  # the guide, the references, the results
    missing = [link for link in local if not (ROOT / link).is_file()]
    assert missing == []
    nav = (ROOT / "mkdocs.yml").read_text()
    unlisted = [link for link in local if link.removeprefix("docs/") not in nav]
    assert unlisted == []  # every page the README points to is in the site's navigation


def test_the_configuration_reference_documents_every_key_with_its_default():
    page = _hooks().configuration()
    cfg = config.Config()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        fields = dataclasses.fields(value) if dataclasses.is_dataclass(value) else [section]
        for f in fields:
            key = f"{section.name}.{f.name}" if dataclasses.is_dataclass(value) else f.name
            row = re.search(rf"^\| `{re.escape(key)}` \| `(.*?)` \| (.*) \|$", page, re.M)
            assert row is not None, key
            default = getattr(value, f.name) if dataclasses.is_dataclass(value) else value
            assert row.group(1) == repr(default), key
            assert row.group(2).strip(), f"{key} has no comment in itra_tune/config.py"


def test_the_command_line_reference_is_each_commands_help():
    hooks = _hooks()
    assert "--confirm-share SHARE" in hooks.command_help("itra_tune.search.command")
    assert "--full-train" in hooks.command_help("itra_tune.production")
    index = hooks.readme()
    assert "](docs/" not in index and "](guide/search.md)" in index  # the README's links, relative to the site


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    run = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    site = tmp_path / "site"
    assert "ITRALoss" in (site / "reference" / "api" / "index.html").read_text()
    assert "data.val_fraction" in (site / "reference" / "configuration" / "index.html").read_text()
    assert "Set-up: two commands" in (site / "index.html").read_text()
