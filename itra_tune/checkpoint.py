"""Checkpoints: atomic writes, and loads that execute no pickled code (``weights_only=True``).

``write_text`` is the same atomic write for the files a search leaves beside its checkpoints (its summary, best
configuration, trials table, answer): a run killed while writing one leaves the previous file, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` by ``write`` into a temporary file beside it, then rename it in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    return _atomic(path, lambda f: torch.save(state, f))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as ``save`` writes a checkpoint."""
    return _atomic(path, lambda f: f.write(text.encode()))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save``: tensors, numbers, strings and containers only."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)
