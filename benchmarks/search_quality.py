"""How close each search strategy comes to the best configuration per unit of compute, replayed against the oracle
grids of ``benchmarks.oracle``.

    python -m benchmarks.search_quality [--tasks fmnist_overfit,digits,fmnist_cosine] [--reps 10] \\
        [--oracle docs/results/search-quality/oracle.json] [--out docs/results/search-quality]

A strategy runs as the platform runs it, with ``max_concurrent`` trials side by side advancing an epoch at a time;
a trial of a grid point sees the validation figures of one of the point's 3 seeds, drawn at random, and costs the
epochs (and the seconds) that seed took. At every epoch of compute the search's pick is the trial whose best
epoch is best on the selection metric, as ``itra_tune.search`` ranks them (failed and collapsed trials never).
The pick's **regret** is the oracle's test figure of its configuration (mean over the seeds, at the last epoch,
as production training gets it) minus the best such figure of the grid: test CE above the best, test accuracy
below it. Written: ``regret.json`` (every repetition's curve), ``<task>_regret.png``, and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from benchmarks import oracle
from itra_tune import spaces

BUDGETS = (1, 2, 4, 8, 16, 32)  # compute, in full trainings (epochs / the task's epochs)
SELECT = {"val_acc": "max", "val_ce": "min"}


@dataclass
class Grid:
    """One task's oracle: curves per point and seed, and each point's production figures."""

    name: str
    epochs: int
    points: list[dict[str, Any]]
    curves: list[list[dict[str, list[float]]]]  # [point][seed] -> figure -> per-epoch values
    failed: list[list[bool]]
    test: dict[str, np.ndarray] = field(default_factory=dict)  # figure -> (points,) mean over seeds, last epoch
    noise: dict[str, float] = field(default_factory=dict)  # figure -> std over seeds of the best point

    @classmethod
    def load(cls, name: str, runs: dict[str, dict[str, Any]]) -> Grid:
        task = oracle.TASKS[name]
        points = task.points()
        curves, failed = [], []
        for p in points:
            rs = [runs.get(oracle.run_key(name, p, s)) for s in oracle.SEEDS]
            if any(r is None for r in rs):
                raise SystemExit(f"the oracle has no run of {name} {oracle.point_key(p)}; run benchmarks.oracle")
            curves.append([r["curves"] for r in rs])
            failed.append([r["status"] != "ok" for r in rs])
        g = cls(name, task.epochs, points, curves, failed)
        num_classes = 10
        for fig, worst in (("test_acc", 1 / num_classes), ("test_ce", math.log(num_classes))):
            per_seed = np.array([[worst if f else c[fig][-1] for c, f in zip(cs, fs)]
                                 for cs, fs in zip(curves, failed)])
            g.test[fig] = per_seed.mean(axis=1)
            best = int(np.argmax(g.test[fig]) if fig == "test_acc" else np.argmin(g.test[fig]))
            g.noise[fig] = float(per_seed[best].std(ddof=1))
        return g

    def regret(self, point: int | None, fig: str) -> float:
        if point is None:  # nothing selected yet: the worst point of the grid
            return float(self.test[fig].max() - self.test[fig].min())
        best = self.test[fig].max() if fig == "test_acc" else self.test[fig].min()
        return float(abs(self.test[fig][point] - best))


@dataclass
class Trial:
    point: int
    seed: int
    epoch: int = 0
    best: float = math.nan
    failed: bool = False
    optuna_trial: Any = None

    def value(self, grid: Grid, metric: str) -> float:
        return grid.curves[self.point][self.seed][metric][self.epoch - 1]


class Sampler:
    """Random or TPE over the grid's points, with the platform's TPE settings (``search.tuner.build_searcher``)."""

    def __init__(self, grid: Grid, kind: str, metric: str, rng: np.random.Generator, num_samples: int) -> None:
        self.grid, self.kind, self.metric, self.rng = grid, kind, metric, rng
        self.keys = list(oracle.TASKS[grid.name].grid)
        self.index = {oracle.point_key(p): i for i, p in enumerate(grid.points)}
        if kind == "tpe":
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(seed=int(rng.integers(2**31)),
                                                 n_startup_trials=min(5, max(1, num_samples // 2)))
            self.study = optuna.create_study(direction="maximize" if SELECT[metric] == "max" else "minimize",
                                             sampler=sampler)
            self.dists = {k: optuna.distributions.CategoricalDistribution(list(v))
                          for k, v in oracle.TASKS[grid.name].grid.items()}

    def ask(self) -> tuple[int, Any]:
        if self.kind == "random":
            return int(self.rng.integers(len(self.grid.points))), None
        t = self.study.ask(self.dists)
        p = dict(t.params)
        if p.get("loss.lam") == 0:
            p["loss.bandwidth"] = "median"  # one oracle point stands for lambda = 0 under every bandwidth
        return self.index[oracle.point_key(p)], t

    def tell(self, trial: Trial, value: float) -> None:
        if self.kind == "tpe":  # a stopped trial reaches Optuna as COMPLETE with its last value, as under Ray
            self.study.tell(trial.optuna_trial, None if trial.failed else value,
                            state=optuna.trial.TrialState.FAIL if trial.failed else None)


class ASHA:
    """Ray's AsyncHyperBandScheduler decision (``_Bracket.on_result``), one bracket: at each rung a trial stops
    when its current value is below the (1 - 1/rf) quantile of the values recorded there before it."""

    def __init__(self, epochs: int, grace: int, rf: int, mode: str) -> None:
        self.rf, self.sign = rf, 1.0 if mode == "max" else -1.0
        rungs, t = [], grace
        while t < epochs:
            rungs.append(t)
            t *= rf
        self.rungs: dict[int, list[float]] = {r: [] for r in rungs}

    def stop(self, epoch: int, value: float) -> bool:
        if epoch not in self.rungs:
            return False
        recorded = self.rungs[epoch]
        cutoff = np.nanpercentile(recorded, (1 - 1 / self.rf) * 100) if recorded else None
        recorded.append(self.sign * value)
        return cutoff is not None and self.sign * value < cutoff


def simulate(grid: Grid, sampler: Sampler, scheduler: ASHA | None, metric: str, workers: int, budget: int,
             rng: np.random.Generator, start: list[int] | None = None) -> list[int | None]:
    """Run one search for ``budget`` epochs; the pick after every epoch of compute (grid point or None).

    ``start``: points to begin with (their trials run first, then the sampler's)."""
    sign = 1.0 if SELECT[metric] == "max" else -1.0
    queue = list(start or [])
    running: list[Trial] = []
    pick, pick_score, trace = None, -math.inf, []
    while len(trace) < budget:
        while len(running) < workers:
            point, handle = (queue.pop(0), None) if queue else sampler.ask()
            running.append(Trial(point, int(rng.integers(len(oracle.SEEDS))), optuna_trial=handle))
        for t in list(running):
            if len(trace) >= budget:
                break
            t.epoch += 1
            curve = grid.curves[t.point][t.seed][metric]
            ended = t.epoch >= grid.epochs
            if t.epoch > len(curve) or (ended and grid.failed[t.point][t.seed]):
                t.failed, ended = True, True
            else:
                v = t.value(grid, metric)
                t.best = v if math.isnan(t.best) else (max if sign > 0 else min)(t.best, v)
                ended = ended or (scheduler is not None and scheduler.stop(t.epoch, v))
                if not t.failed and ended and sign * t.best > pick_score:  # ranked once the trial has ended
                    pick, pick_score = t.point, sign * t.best
            trace.append(pick)
            if ended:
                running.remove(t)
                if t.optuna_trial is not None:
                    sampler.tell(t, t.value(grid, metric) if not t.failed else math.nan)
    return trace


def top_k(grid: Grid, metric: str, budget: int, rng: np.random.Generator) -> int | None:
    """Egele et al. (2023)'s baseline, the pick at the end of ``budget`` epochs: half the budget screens random
    points for one epoch each, the best K = (half the budget) / epochs of them train to the end."""
    sign = 1.0 if SELECT[metric] == "max" else -1.0
    k = max(1, budget // 2 // grid.epochs)
    n = max(k, budget - k * (grid.epochs - 1))  # the K finalists' first epoch is part of the screening
    screened = [(int(rng.integers(len(grid.points))), int(rng.integers(len(oracle.SEEDS)))) for _ in range(n)]
    first = [sign * grid.curves[p][s][metric][0] if grid.curves[p][s][metric] else -math.inf for p, s in screened]
    finalists = sorted(range(n), key=lambda i: -first[i])[:k]
    done = [(max(sign * v for v in grid.curves[p][s][metric]), p) for p, s in (screened[i] for i in finalists)
            if not grid.failed[p][s]]
    return max(done)[1] if done else None


@dataclass(frozen=True)
class Strategy:
    name: str
    metric: str
    run: Callable[[Grid, int, np.random.Generator], Any]


def strategies(space: spaces.Space, epochs: int, workers: int) -> list[Strategy]:
    grace = int(space.scheduler.get("grace_period", 1))
    rf = int(space.scheduler.get("reduction_factor", 2))
    late = max(1, round(epochs / 3))

    def search(kind: str, metric: str, asha: tuple[int, int] | None) -> Callable[..., list[int | None]]:
        def run(grid: Grid, budget: int, rng: np.random.Generator) -> list[int | None]:
            sched = ASHA(grid.epochs, *asha, SELECT[metric]) if asha else None
            return simulate(grid, Sampler(grid, kind, metric, rng, space.num_samples), sched, metric, workers,
                            budget, rng)
        return run

    out = []
    for metric in SELECT:
        out += [
            Strategy("random", metric, search("random", metric, None)),
            Strategy("tpe", metric, search("tpe", metric, None)),
            Strategy(f"tpe+asha (grace {grace}, rf {rf})", metric, search("tpe", metric, (grace, rf))),
            Strategy(f"tpe+asha (grace {late}, rf 3)", metric, search("tpe", metric, (late, 3))),
            Strategy("1-epoch top-K", metric, lambda g, b, r, m=metric: top_k(g, m, b, r)),
        ]
    return out


def evaluate(grid: Grid, strategy: Strategy, reps: int) -> dict[str, Any]:
    """Every repetition's regret at each budget, on both test figures."""
    horizon = BUDGETS[-1] * grid.epochs
    curves: dict[str, list[list[float]]] = {"test_acc": [], "test_ce": []}
    for rep in range(reps):
        rng = np.random.default_rng([rep, zlib.crc32(strategy.name.encode())])
        if strategy.name == "1-epoch top-K":  # decides by the budget it is given: one run per budget
            picks = [top_k(grid, strategy.metric, b * grid.epochs, rng) for b in BUDGETS]
        else:
            trace = strategy.run(grid, horizon, rng)
            picks = [trace[b * grid.epochs - 1] for b in BUDGETS]
        for fig in curves:
            curves[fig].append([grid.regret(p, fig) for p in picks])
    return {"strategy": strategy.name, "metric": strategy.metric, "budgets": list(BUDGETS), "regret": curves}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_quality", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(oracle.TASKS))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--oracle", type=Path, default=oracle.OUT)
    p.add_argument("--out", type=Path, default=oracle.OUT.parent)
    args = p.parse_args(argv)
    runs = oracle.load(args.oracle)
    report: dict[str, Any] = {}
    for name in args.tasks.split(","):
        task = oracle.TASKS[name]
        grid = Grid.load(name, runs)
        space = spaces.load(task.space)
        best = {f: grid.points[int(np.argmax(grid.test[f]) if f == "test_acc" else np.argmin(grid.test[f]))]
                for f in grid.test}
        print(f"\n== {name}: {len(grid.points)} points x {len(oracle.SEEDS)} seeds, {grid.epochs} epochs")
        for f, pt in best.items():
            print(f"   oracle best {f}: {grid.test[f].max() if f == 'test_acc' else grid.test[f].min():.4f} "
                  f"(seed noise {grid.noise[f]:.4f}) at {oracle.point_key(pt)}")
        rows = [evaluate(grid, s, args.reps) for s in strategies(space, grid.epochs, task.max_concurrent)]
        report[name] = {"best": best, "noise": grid.noise, "epochs": grid.epochs, "rows": rows}
        print(f"   median regret (test acc points / test CE) at {', '.join(map(str, BUDGETS))} full trainings:")
        for r in rows:
            acc = np.median(np.array(r["regret"]["test_acc"]), axis=0) * 100
            ce = np.median(np.array(r["regret"]["test_ce"]), axis=0)
            print(f"   {r['strategy']:<26} on {r['metric']:<7} acc " + " ".join(f"{v:5.2f}" for v in acc)
                  + "  ce " + " ".join(f"{v:6.3f}" for v in ce))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "regret.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
