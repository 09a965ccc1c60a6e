"""Where a search's trials train on a Ray cluster with GPUs: the placement table, for a real GPU cluster.

    ray start --head --num-gpus 2 ...; ray start --address HEAD:6379 --num-gpus 2 ...   (or a real cluster)
    python -m benchmarks.placement --address HEAD:6379 [--gpus 0.5] [--trials 4] [--workers 2] [--out DIR]

Runs the two searches `tests/test_placement.py` runs on logical GPUs, on whatever cluster ``--address`` names:
``--trials`` one-epoch trials of ``--gpus`` GPU each, then one data-parallel trial of ``--workers`` workers of one
GPU each, on the synthetic data. Prints one row per trial (trial, status, node, the GPU ids Ray gave it, the device
it trained on) and a line per search: the GPUs used and the most trials any one GPU held. On real GPUs the
device column reads ``cuda`` and the packing is Ray's: 1/--gpus trials to a GPU.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml


def space(folder: Path, name: str, trials: int, epochs: int = 1) -> Path:
    raw = {"name": name,
           "base": {"data": {"name": "synthetic", "batch_size": 32, "subset": 640}, "model": {"name": "mlp"},
                    "loss": {"name": "itra_c", "lam": 0.5}, "train": {"epochs": epochs, "compactness_samples": 64}},
           "search": {"loss.lam": {"type": "float", "low": 0.1, "high": 1.0}},
           "budget": {"num_samples": trials, "max_concurrent": trials, "confirm_share": 0},
           "scheduler": {"name": "none"}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def search(address: str, folder: Path, name: str, trials: int, *flags: str) -> list[dict[str, str]]:
    """One search on the cluster; its trials' rows (trials.csv)."""
    cmd = [sys.executable, "-m", "itra_tune.search", "--space", str(space(folder, name, trials)), "--address",
           address, "--storage-path", str(folder / "st"), "--name", name, "--tracking-uri",
           f"sqlite:///{folder / 'mlflow.db'}", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-2000:], file=sys.stderr)
    rows = folder / "st" / name / "trials.csv"
    return list(csv.DictReader(rows.open())) if rows.is_file() else []


def table(title: str, rows: list[dict[str, str]]) -> None:
    print(f"\n{title}")
    print(f"{'trial':<22} {'status':<12} {'node':<14} {'gpu ids':<10} device")
    for r in rows:
        print(f"{r['trial']:<22} {r['status'][:12]:<12} {r.get('node', '')[:12]:<14} {r.get('gpu_ids', ''):<10} "
              f"{r.get('device', '')}")
    held = Counter((r.get("node"), i) for r in rows for i in (r.get("gpu_ids") or "").split(",") if i)
    print(f"{len(held)} GPUs used; at most {max(held.values(), default=0)} trials (or workers) on one GPU")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="the Ray cluster, HOST:PORT")
    p.add_argument("--gpus", type=float, default=0.5, help="GPUs per trial of the first search")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="workers of the data-parallel trial, one GPU each")
    p.add_argument("--out", help="where the searches are kept (default: a temporary folder)")
    args = p.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="placement-"))
    folder.mkdir(parents=True, exist_ok=True)
    table(f"{args.trials} trials of {args.gpus:g} GPU", search(
        args.address, folder, "packed", args.trials, "--gpus-per-trial", str(args.gpus), "--cpus-per-trial", "0.5"))
    table(f"1 trial of {args.workers} workers, 1 GPU each", search(
        args.address, folder, "workers", 1, "--workers-per-trial", str(args.workers), "--gpus-per-trial", "1",
        "--cpus-per-trial", "0.5"))


if __name__ == "__main__":
    main()
