"""Oracle grids for the search-quality benchmark: every point of a grid over a task's searched keys, trained at
the full budget with 3 seeds, its validation and test figures recorded at every epoch.

    ITRA_TUNE_DATA=/path/to/data python -m benchmarks.oracle [--tasks fmnist_overfit,digits,fmnist_cosine] \\
        [--workers 2] [--full-train] [--out docs/results/search-quality/oracle.json]

The cache is written after every run (atomically) and read back on start: an interrupted grid resumes where it
stopped, and a finished one costs nothing. ``benchmarks.search_quality`` replays searches against these curves:
a trial of a configuration at epoch e sees the validation figures one of its seeds reached at epoch e and costs
the seconds that seed's epochs took.

``--full-train`` trains every point and seed again as ``--full-train`` retrains a search's winner (the validation
split folded back into training, ``data.val_fraction=0``) and records its test figures at every epoch
(``oracle-full.json``): the benchmark reads off them what the full-train hand-off of a pick gives at the epoch the
search selected.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from itra_tune import engine, spaces
from itra_tune.config import LossConfig

OUT = Path("docs/results/search-quality/oracle.json")
FULL_OUT = OUT.with_name("oracle-full.json")
SEEDS = (0, 1, 2)  # the seeds of a grid of many points (the digits' 144)
MORE_SEEDS = tuple(range(8))  # of a grid of 48: eight seeds a point measure the seed noise the goal is read against
LAMS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)  # a log grid with lambda = 0 (plain cross-entropy) on it
BANDWIDTHS = ("median", "mean", "multiscale")
# val_ce_se: not in the runs cached before the engine reported it
FIGURES = ("val_acc", "val_ce", "val_ce_se", "test_acc", "test_ce", "epoch_time")
FULL_FIGURES = ("test_acc", "test_ce", "epoch_time")  # a full-train run has no validation split


@dataclass(frozen=True)
class Task:
    """A CPU-sized task: a shipped space, the overrides that size it, the grid over its searched keys."""

    space: str
    overrides: tuple[str, ...]
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    max_concurrent: int = 4  # trials side by side, as the space runs them (ASHA's asynchrony depends on it)
    previous_asha: tuple[int, int] = (3, 3)  # the space's ASHA before this benchmark: grace period, reduction factor
    seeds: tuple[int, ...] = MORE_SEEDS  # each point trained once with each

    @property
    def epochs(self) -> int:
        return spaces.load(self.space).base_config(self.overrides).train.epochs

    def points(self) -> list[dict[str, Any]]:
        """Every grid point; at lambda = 0 the bandwidth is unused, so one point per other value."""
        keys = list(self.grid)
        seen, out = set(), []
        for values in itertools.product(*self.grid.values()):
            point = dict(zip(keys, values))
            if point.get("loss.lam", 1) == 0:
                point["loss.bandwidth"] = "median"
            key = point_key(point)
            if key not in seen:
                seen.add(key)
                out.append(point)
        return out


_FMNIST_1K = ("model.name=mlp", "data.augment=false", "data.subset=1000", "train.threads=1")
TASKS = {
    # Where plain CE overfits: 1,000 images, 60 epochs at a constant rate, no weight decay (the pairings study's
    # regime). ITRA's benefit there is a late one: test CE that does not climb.
    "fmnist_overfit": Task("fmnist", (*_FMNIST_1K, "optim.schedule=none", "optim.weight_decay=0", "train.epochs=60"),
                           {"loss.lam": LAMS, "data.batch_size": (64, 128, 256), "loss.bandwidth": BANDWIDTHS}),
    # The space's own recipe (cosine schedule, weight decay) on the same 1,000 images, 30 epochs: early epochs run
    # at a high rate, so early rungs rank trials at a moment unlike the end.
    "fmnist_cosine": Task("fmnist", (*_FMNIST_1K, "train.epochs=30"),
                          {"loss.lam": LAMS, "data.batch_size": (64, 128, 256), "loss.bandwidth": BANDWIDTHS}),
    # The embedded demo as shipped (small CNN, bundled digits, 6 epochs), its learning rate searched too.
    "digits": Task("demo", ("train.threads=1",),
                   {"loss.lam": LAMS, "data.batch_size": (32, 64, 128), "loss.bandwidth": BANDWIDTHS,
                    "optim.lr": (0.015, 0.05, 0.15)}, max_concurrent=2, previous_asha=(2, 2), seeds=SEEDS),
    # A task the default was not designed on: another optimizer (AdamW, as transformers and many CNN recipes
    # train), three times the images, 20 epochs of a cosine schedule.
    "fmnist_adamw": Task("fmnist", ("model.name=mlp", "data.augment=false", "data.subset=3000", "train.threads=1",
                                    "optim.name=adamw", "optim.lr=0.002", "optim.weight_decay=0.05",
                                    "train.epochs=20"),
                         {"loss.lam": LAMS, "data.batch_size": (64, 128, 256), "loss.bandwidth": BANDWIDTHS}),
    # A kind none of the others is: the convolutional model under AdamW at a constant rate (the digits task trains
    # it by SGD on a cosine schedule, the AdamW task trains an MLP), 10 epochs.
    "digits_adamw": Task("demo", ("train.threads=1", "optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.05",
                                  "optim.schedule=none", "train.epochs=10"),
                         {"loss.lam": LAMS, "data.batch_size": (32, 64, 128), "loss.bandwidth": BANDWIDTHS},
                         max_concurrent=2, previous_asha=(2, 2)),
}


def point_key(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={point[k]}" for k in sorted(point))


def run_key(task: str, point: dict[str, Any], seed: int) -> str:
    return f"{task}|{point_key(point)}|seed={seed}"


def train(job: tuple[str, dict[str, Any], int, bool]) -> dict[str, Any]:
    """One grid point and seed at the full budget (``full``: on train + validation): its figures at every epoch."""
    name, point, seed, full = job
    task = TASKS[name]
    torch.set_num_threads(1)
    cfg = spaces.load(task.space).base_config([*task.overrides, f"seed={seed}",
                                               *(f"{k}={v}" for k, v in point.items()),
                                               *(["data.val_fraction=0"] if full else [])])
    figures = FULL_FIGURES if full else FIGURES
    curves: dict[str, list[float]] = {f: [] for f in figures}

    def report(row: dict[str, Any], _checkpoint: dict[str, Any]) -> None:
        for f in figures:
            curves[f].append(round(float(row[f]), 5))

    status = "ok"
    try:
        engine.fit(cfg, report)
    except engine.Diverged as e:  # a collapsed or diverged point is a result too: its trial would end there
        status = f"{type(e).__name__.lower()}: {e}"
    return {"task": name, "params": point, "seed": seed, "status": status, "curves": curves}


def load(path: Path = OUT) -> dict[str, dict[str, Any]]:
    """The cached runs by run key (empty when there is no cache yet)."""
    if not path.exists():
        return {}
    runs = json.loads(path.read_text())["runs"]
    return {run_key(r["task"], r["params"], r["seed"]): r for r in runs}


def save(runs: dict[str, dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = {n: {"space": t.space, "overrides": list(t.overrides), "grid": {k: list(v) for k, v in t.grid.items()},
                 "seeds": list(t.seeds)} for n, t in TASKS.items()}
    body = {"loss_form": LossConfig().form, "tasks": tasks,
            "runs": sorted(runs.values(), key=lambda r: run_key(r["task"], r["params"], r["seed"]))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(tmp, path)  # a killed grid leaves the previous cache, never half of one


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.oracle", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--workers", type=int, default=2, help="runs side by side, one thread each")
    p.add_argument("--seeds", type=lambda v: {int(s) for s in v.split(",")},
                   help="only these of each task's seeds (comma-separated; default all of them)")
    p.add_argument("--full-train", action="store_true", help="the full-train grid (train + validation)")
    p.add_argument("--out", type=Path, help=f"the cache (default {OUT}, with --full-train {FULL_OUT})")
    args = p.parse_args(argv)
    args.out = args.out or (FULL_OUT if args.full_train else OUT)
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        p.error(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    only = args.seeds
    runs = load(args.out)
    jobs = [(name, point, seed, args.full_train) for name in args.tasks.split(",") for point in TASKS[name].points()
            for seed in TASKS[name].seeds if (only is None or seed in only) and run_key(name, point, seed) not in runs]
    print(f"{len(runs)} runs cached, {len(jobs)} to train with {args.workers} workers", flush=True)
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for i, r in enumerate(pool.imap_unordered(train, jobs), 1):
            runs[run_key(r["task"], r["params"], r["seed"])] = r
            save(runs, args.out)
            done = time.perf_counter() - t0
            c = r["curves"]
            last = f"test acc {c['test_acc'][-1]:.4f} test CE {c['test_ce'][-1]:.4f}" if c["test_acc"] else ""
            print(f"[{i}/{len(jobs)} {done / 60:.1f} min, {done / i * (len(jobs) - i) / 60:.0f} min left] "
                  f"{r['task']} {point_key(r['params'])} seed {r['seed']}: {r['status']} {last}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    raise SystemExit(main())
