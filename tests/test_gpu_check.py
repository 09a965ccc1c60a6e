"""The GPU check's CPU fallback: every part of the table runs where no GPU is, with PyTorch alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What a bare GPU box lacks (it has torch, torchvision, transformers, numpy and pyyaml): the check imports none
ABSENT = ("ray", "optuna", "mlflow", "sklearn", "matplotlib")  # (tqdm comes with transformers)
RUN = """
import sys
from benchmarks import gpu_check
code = gpu_check.main(["--device", "cpu", "--tiny"])
print("IMPORTED:", sorted({m.split(".")[0] for m in sys.modules} & set(ABSENT)))
sys.exit(code)
""".replace("ABSENT", repr(ABSENT))


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_fallback_with_pytorch_alone():
    run = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.split("| what | measured |", 1)[1]
    for part in ("itra_c (independent S2) / ce", "itra_c (detached S2) / ce", "itra_c (memory S2) / ce",
                 "itra_c (split S2) / ce", "vectorized vs per-class loop", "K = 1000", "images on the device, CE",
                 "images on the device, ITRA-c", "training processes sharing the device",
                 "bf16 vs fp32"):
        assert part in table, part
    assert "| agree" in table.replace("(agree", "| agree")
    assert run.stdout.strip().splitlines()[-1] == "IMPORTED: []"
    assert "CPU (1 threads)" in run.stdout  # the fallback runs one thread, whatever else the machine runs
