"""What a killed driver leaves of an experiment's snapshots, made restorable before a resume.

Tune writes its experiment snapshot (``experiment_state-<session>.json``) and Ray Train its run's
(``checkpoint_manager_snapshot.json``) in place: opened, truncated, then written, and copied to the storage path
the same way. A driver killed inside that window leaves a file cut short, and Tune's restore then fails on it
(``JSONDecodeError``) with all the finished work behind it. So the driver keeps a copy of each snapshot as last
read whole (``keep``, every second of the run) and a resume puts that copy back (``mend``): it loses at most the
seconds between the two snapshots, never a finished trial.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

# Tune's experiment snapshot and a data-parallel trial's Train run snapshot, relative to the experiment folder
PATTERNS = ("experiment_state-*.json", "*/checkpoint_manager_snapshot.json")


def copy_of(snapshot: Path) -> Path:
    """Where ``snapshot``'s last whole version is kept: hidden, and a name no Ray pattern matches."""
    return snapshot.with_name(f".{snapshot.name}.whole")


def whole(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
        return True
    except (OSError, ValueError):
        return False


def _replace(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class Keeper:
    """Copies each snapshot of one experiment that changed since the last look and reads whole."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int]] = {}

    def keep(self, experiment: Path) -> list[Path]:
        """Returns the snapshots copied this time."""
        kept = []
        for pattern in PATTERNS:
            for path in experiment.glob(pattern):
                try:
                    st = path.stat()
                except OSError:
                    continue
                stamp = (st.st_mtime_ns, st.st_size)
                if self._seen.get(path) == stamp:
                    continue
                if whole(path):  # a file being written is read again at the next look
                    _replace(path, copy_of(path))
                    self._seen[path] = stamp
                    kept.append(path)
        return kept


def mend(experiment: Path) -> list[str]:
    """Put back the last whole copy of every snapshot in ``experiment`` that was cut short; one without a copy is
    moved aside (``<name>.cut``), so Tune restores from an earlier session's snapshot, or none, and a Train run
    starts its trial over. Returns what was done, one line each, also printed as a note."""
    done = []
    for pattern in PATTERNS:
        for path in sorted(experiment.glob(pattern)):
            if whole(path):
                continue
            saved = copy_of(path)
            name = path.relative_to(experiment)
            if saved.exists() and whole(saved):
                _replace(saved, path)
                done.append(f"{name} was cut short when the driver stopped: its previous version put back")
            else:
                os.replace(path, path.with_name(path.name + ".cut"))
                done.append(f"{name} was cut short when the driver stopped, with no previous version: set aside")
    for line in done:
        print(f"note: {line}", file=sys.stderr)
    return done
