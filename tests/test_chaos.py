"""The chaos program (``benchmarks/chaos.py``) on a small scale: a search whose driver is SIGKILLed and resumed,
then one whose trial's worker is killed, loses no finished work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_killed_and_resumed_searches_lose_nothing(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--kills", "1", "--trials", "3", "--epochs", "5",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-3000:] + (tmp_path / "searches.log").read_text()[-3000:]
    kills = re.search(r"(\d+)/(\d+) kills resumed, (\d+)/3 trials finished, (\d+) duplicated or missing epochs, "
                      r"(\d+) lost trials", run.stdout)
    assert kills and kills[1] == kills[2] and int(kills[2]) >= 1 and kills[3] == "3" and kills[4] == kills[5] == "0"
    assert re.search(r"  killed worker \d+ of trial \w+", run.stdout)
    assert "worker killed: exit 0, 3/3 trials finished, 0 duplicated or missing epochs, 0 lost trials" in run.stdout
