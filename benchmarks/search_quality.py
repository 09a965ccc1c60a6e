"""How close each search strategy comes to the best configuration per unit of compute, replayed against the oracle
grids of ``benchmarks.oracle``, scored by what production gets from the hand-off.

    python -m benchmarks.search_quality [--tasks fmnist_overfit,digits,fmnist_cosine,fmnist_adamw] [--reps 10] \\
        [--oracle docs/results/search-quality/oracle.json] [--out docs/results/search-quality]

A strategy runs as the platform runs it, with ``max_concurrent`` trials side by side advancing an epoch at a time;
a trial of a grid point sees the validation figures of one of the point's seeds (8; the digits' 3), drawn at
random, and costs the epochs (and the seconds) that seed took. At every epoch of compute the search's pick is the
trial whose selected epoch is best, as ``itra_tune.search`` ranks them (``itra_tune.selection``; failed and
collapsed trials never).

The pick's **production figure** is what the hand-off gives: retraining its configuration selects an epoch by the
same rule (``itra_tune.train``), so it is the test figure at each seed's selected epoch, mean over the seeds (the
*kept checkpoint*); with ``--full-train`` the validation split is folded in and training stops at that epoch, so it
is the full-train grid's (``oracle-full.json``) test figure at the same epochs (the *full-train* figure). Its
**regret** is that figure minus the best such figure of the grid (test CE above the best, test accuracy below).
The figure the benchmark scored before, the mean test figure at the *last* epoch, which no hand-off gives, is kept
beside them for comparison. Written: ``regret.json`` (every repetition's curve), ``<task>_regret.png``, and a
table on stdout; the shipped default's row carries the word ``default``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from benchmarks import oracle
from itra_tune import engine, selection, spaces
from itra_tune.config import SelectConfig

BUDGETS = (1, 2, 4, 8, 16, 32)  # compute, in full trainings (epochs / the task's epochs)
SELECT = {"val_acc": "max", "val_ce": "min"}
TIE_RULES = {"tie": "one_se", "tie_ce": "one_se_ce"}  # the benchmark's names of the windowed rules
RULES = ("val_ce", "val_acc", "tie", "tie_ce")  # how a trial's epoch and the search's pick are chosen
DEFAULT_RULE = "val_ce"  # whose seed spread is the noise the regrets are read against (as before one_se shipped)
SHIPPED_RULE = {"one_se": "tie", "one_se_ce": "tie_ce"}.get(spaces.DEFAULT_RULE, spaces.DEFAULT_METRIC)  # shipped
VAL_SIZE = {"fmnist_overfit": 6000, "fmnist_cosine": 6000, "digits": 270, "fmnist_adamw": 6000,  # validation
            "digits_adamw": 270}  # examples
FIGURES = ("test_acc", "test_ce")
WORST = {"test_acc": 0.1, "test_ce": math.log(10)}  # a failed run's figure: chance on the 10-class tasks


def rule_of(rule: str) -> SelectConfig:
    """``itra_tune.selection``'s rule by the benchmark's name for it: ``val_ce`` and ``val_acc`` select by that
    metric alone, ``tie`` is the one-standard-error rule (the shipped default, ranked as a search ranks it),
    ``tie_ce`` the same guarded in CE (``one_se_ce``)."""
    if rule in TIE_RULES:
        return SelectConfig(rule=TIE_RULES[rule])
    return SelectConfig(rule="metric", metric=rule, mode=SELECT[rule])


def val_row(curves: dict[str, list[float]], epoch: int, val_size: int) -> dict[str, Any]:
    """What a run reports of its validation at ``epoch`` (from 1): accuracy, CE, the count, and the CE's standard
    error where the oracle recorded it (runs cached before the engine reported it have none)."""
    row = {"epoch": epoch, "val_acc": curves["val_acc"][epoch - 1], "val_ce": curves["val_ce"][epoch - 1],
           selection.COUNT: val_size}
    if selection.CE_SE in curves:
        row[selection.CE_SE] = curves[selection.CE_SE][epoch - 1]
    return row


def selected_epoch(curves: dict[str, list[float]], upto: int, rule: str, val_size: int) -> int:
    """The epoch (from 1) a run of ``upto`` epochs hands over, by ``itra_tune.selection``'s rule."""
    return selection.best([val_row(curves, e, val_size) for e in range(1, upto + 1)], rule_of(rule))["epoch"]


@dataclass
class Grid:
    """One task's oracle: curves per point and seed, and each point's production figures under each rule."""

    name: str
    epochs: int
    points: list[dict[str, Any]]
    curves: list[list[dict[str, list[float]]]]  # [point][seed] -> figure -> per-epoch values
    seeds: int  # how many seeds each point was trained with
    failed: list[list[bool]]
    full: list[list[dict[str, list[float]]]] | None = None  # the full-train grid's curves, when it was run
    full_failed: list[list[bool]] | None = None
    # figure -> (points,) mean over seeds: at each seed's selected epoch by rule ("kept", "full") or the last epoch
    kept: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    fulltrain: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    last: dict[str, np.ndarray] = field(default_factory=dict)
    full_last: dict[str, np.ndarray] = field(default_factory=dict)  # the full-train run's last epoch (no stop)
    noise: dict[str, float] = field(default_factory=dict)  # figure -> median std over seeds, best tenth of points
    spread: dict[str, np.ndarray] = field(default_factory=dict)  # figure -> (points,) std over seeds, kept, default
    spread_by: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # rule -> the same under the rule
    val: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # rule -> val_acc, val_ce -> (points,)

    @classmethod
    def load(cls, name: str, runs: dict[str, dict[str, Any]], full_runs: dict[str, dict[str, Any]]) -> Grid:
        task = oracle.TASKS[name]
        points = task.points()
        curves, failed, full, full_failed = [], [], [], []
        for p in points:
            rs = [runs.get(oracle.run_key(name, p, s)) for s in task.seeds]
            if any(r is None for r in rs):
                raise SystemExit(f"the oracle has no run of {name} {oracle.point_key(p)}; run benchmarks.oracle")
            curves.append([r["curves"] for r in rs])
            failed.append([r["status"] != "ok" for r in rs])
            fs = [full_runs.get(oracle.run_key(name, p, s)) for s in task.seeds]
            full.append([f["curves"] if f else None for f in fs])
            full_failed.append([f is not None and f["status"] != "ok" for f in fs])
        has_full = all(c is not None for cs in full for c in cs)
        g = cls(name, task.epochs, points, curves, len(task.seeds), failed, full if has_full else None,
                full_failed if has_full else None)
        for fig in FIGURES:
            g.last[fig] = np.array([[WORST[fig] if f else c[fig][-1] for c, f in zip(cs, fs)]
                                    for cs, fs in zip(curves, failed)]).mean(axis=1)
            if g.full is not None:
                g.full_last[fig] = np.array([[WORST[fig] if f else c[fig][-1] for c, f in zip(cs, fs)]
                                             for cs, fs in zip(g.full, g.full_failed)]).mean(axis=1)
        for rule in RULES:
            g.kept[rule], g.fulltrain[rule] = {}, {}
            picked = [[selected_epoch(c, len(c["val_ce"]), rule, VAL_SIZE[name]) if c["val_ce"] else 0
                       for c in cs] for cs in curves]
            g.val[rule] = {}  # what a selection on validation sees, mean over the seeds
            for fig, worst in (("val_acc", 0.0), ("val_ce", math.inf)):
                g.val[rule][fig] = np.array([[worst if f or not e else c[fig][e - 1] for c, f, e in zip(cs, fs, es)]
                                             for cs, fs, es in zip(curves, failed, picked)]).mean(axis=1)
            for fig in FIGURES:
                per_seed = np.array([[WORST[fig] if f or not e else c[fig][e - 1] for c, f, e in zip(cs, fs, es)]
                                     for cs, fs, es in zip(curves, failed, picked)])
                g.kept[rule][fig] = per_seed.mean(axis=1)
                g.spread_by.setdefault(rule, {})[fig] = per_seed.std(axis=1, ddof=1)
                if rule == DEFAULT_RULE:
                    order = np.argsort(-g.kept[rule][fig] if fig == "test_acc" else g.kept[rule][fig])
                    top = order[: max(3, len(points) // 10)]  # the seeds' spread where a good search ends
                    g.noise[fig] = float(np.median(per_seed[top].std(axis=1, ddof=1)))
                    g.spread[fig] = per_seed.std(axis=1, ddof=1)
                if g.full is not None:
                    g.fulltrain[rule][fig] = np.array([
                        [WORST[fig] if f or not e or len(c[fig]) < e else c[fig][e - 1]
                         for c, f, e in zip(cs, fs, es)]
                        for cs, fs, es in zip(g.full, g.full_failed, picked)]).mean(axis=1)
        return g

    def seconds(self, point: int, seed: int, epoch: int) -> float:
        """What epoch ``epoch`` of the point took (a failed run's missing epochs: its mean epoch)."""
        times = self.curves[point][seed]["epoch_time"]
        return times[epoch - 1] if epoch <= len(times) else (float(np.mean(times)) if times else 0.0)

    def index(self, point: dict[str, Any]) -> int:
        return [oracle.point_key(p) for p in self.points].index(oracle.point_key(point))

    def figures(self, which: str, rule: str) -> dict[str, np.ndarray] | None:
        """The production figures of every point: ``kept`` (the kept checkpoint), ``full`` (the full-train
        retraining to the selected epoch; None without the full-train grid), ``full_last`` (the full-train
        retraining to its last epoch, the alternative hand-off) or ``last`` (the last epoch, the former score)."""
        if which == "last":
            return self.last
        if which == "kept":
            return self.kept[rule]
        if self.full is None:
            return None
        return self.fulltrain[rule] if which == "full" else self.full_last

    def best(self, which: str, fig: str, rule: str = DEFAULT_RULE) -> float:
        """The best production figure of the grid's points under ``rule``: what the search's best pick would give."""
        v = self.figures(which, rule)[fig]
        return float(v.max() if fig == "test_acc" else v.min())

    def regret(self, point: int | None, fig: str, which: str = "kept", rule: str = DEFAULT_RULE) -> float:
        """How far a pick's production figure is from the grid's best under the same rule and hand-off (the rule's
        own cost against another rule is the difference of their bests, printed in each task's header)."""
        values = self.figures(which, rule)
        if values is None:
            return math.nan
        if point is None:  # nothing selected yet: the worst point of the grid
            return float(values[fig].max() - values[fig].min())
        return float(abs(values[fig][point] - self.best(which, fig, rule)))


@dataclass
class Trial:
    point: int
    seed: int
    epoch: int = 0
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


def choose(grid: Grid, trials: list[Trial], rule: str) -> int | None:
    """The pick among ended trials, each at its own selected epoch (``selected_epoch``), then among the trials by
    the same rule (``itra_tune.selection``, or ``tie``)."""
    rows = []
    for t in trials:
        c = grid.curves[t.point][t.seed]
        e = selected_epoch(c, t.epoch, rule, VAL_SIZE[grid.name])
        rows.append({**val_row(c, e, VAL_SIZE[grid.name]), "point": t.point})
    if not rows:
        return None
    return selection.best(rows, rule_of(rule))["point"]


def simulate(grid: Grid, sampler: Sampler, scheduler: ASHA | None, metric: str, workers: int, budget: int,
             rng: np.random.Generator, rule: str | None = None) -> tuple[int | None, float]:
    """Run one search for ``budget`` epochs of compute; its pick among the trials that ended (grid point or None)
    and the seconds its epochs took. Trials still running when the budget is spent are cut, as a search out of
    time would cut them."""
    ended, seconds = run_trials(grid, sampler, scheduler, metric, workers, budget, rng)
    return choose(grid, ended, rule or metric), seconds


def run_trials(grid: Grid, sampler: Sampler, scheduler: ASHA | None, metric: str, workers: int, budget: int,
               rng: np.random.Generator) -> tuple[list[Trial], float]:
    """``simulate``'s search: the trials that ended (not failed) and the seconds its epochs took."""
    running: list[Trial] = []
    ended_trials: list[Trial] = []
    spent, seconds = 0, 0.0
    while spent < budget:
        while len(running) < workers:
            point, handle = sampler.ask()
            running.append(Trial(point, int(rng.integers(grid.seeds)), optuna_trial=handle))
        for t in list(running):
            if spent >= budget:
                break
            spent += 1
            t.epoch += 1
            curve = grid.curves[t.point][t.seed][metric]
            seconds += grid.seconds(t.point, t.seed, t.epoch)
            ended = t.epoch >= grid.epochs
            if t.epoch > len(curve) or (ended and grid.failed[t.point][t.seed]):
                t.failed, ended = True, True
            else:
                ended = ended or (scheduler is not None and scheduler.stop(t.epoch, t.value(grid, metric)))
            if ended:
                running.remove(t)
                if not t.failed:  # ranked once the trial has ended
                    ended_trials.append(t)
                if t.optuna_trial is not None:
                    sampler.tell(t, t.value(grid, metric) if not t.failed else math.nan)
    return ended_trials, seconds


def confirm_trainings(share: float, budget: int) -> int:
    """``search.confirming.trainings``: the confirmation's share of a budget of full trainings, rounded down, as
    long as two are left to explore."""
    t = math.floor(share * budget + 1e-9)
    return t if budget - t >= 2 else 0


def confirmed(grid: Grid, trials: list[Trial], rule: str, trainings: int, candidates: int,
              rng: np.random.Generator) -> tuple[int | None, float]:
    """The confirmation stage as ``search.confirming`` runs it after the exploration's ``trials``: the best
    ``candidates`` distinct points among the completed trials (all ended ones when none completed), ``trainings``
    full trainings of them in turn from the top, each on a seed it has not had, and the pick the candidate whose
    validation figures, each seed at its selected epoch, are best on average (``rule``: the space's, or ``tie``
    on the means). The oracle holds a few seeds a point (8; the digits 3): trainings beyond them are paid for and
    not used. Returns the pick and the seconds of the confirmation's trainings."""
    full = [t for t in trials if t.epoch >= grid.epochs] or trials
    rows = []
    for t in full:
        c = grid.curves[t.point][t.seed]
        e = selected_epoch(c, t.epoch, rule, VAL_SIZE[grid.name])
        rows.append({**val_row(c, e, VAL_SIZE[grid.name]), "point": t.point, "seed": t.seed})
    order = selection.ranked(rows, rule_of(rule))
    top: list[dict[str, Any]] = []
    for r in order:
        if r["point"] not in {c["point"] for c in top}:
            top.append(r)
    top = top[:min(candidates, trainings)]
    if not top:
        return choose(grid, trials, rule), 0.0
    seeds = {c["point"]: [c["seed"]] for c in top}
    seconds = 0.0
    for i in range(trainings):
        point = top[i % len(top)]["point"]
        unused = [s for s in range(grid.seeds) if s not in seeds[point]]
        s = int(rng.choice(unused)) if unused else None
        cost_seed = s if s is not None else seeds[point][0]
        seconds += sum(grid.seconds(point, cost_seed, e) for e in range(1, grid.epochs + 1))
        if s is not None:
            seeds[point].append(s)
    means = []
    for point, ss in seeds.items():
        if any(grid.failed[point][s] for s in ss):
            continue
        picked = [(grid.curves[point][s], selected_epoch(grid.curves[point][s], grid.epochs, rule,
                                                          VAL_SIZE[grid.name])) for s in ss]
        means.append({f: float(np.mean([c[f][e - 1] for c, e in picked])) for f in SELECT}
                     | {"point": point, selection.COUNT: VAL_SIZE[grid.name]})
    if not means:
        return top[0]["point"], seconds
    return selection.best(means, rule_of(rule))["point"], seconds


def top_k(grid: Grid, metric: str, budget: int, rng: np.random.Generator) -> tuple[int | None, float]:
    """Egele et al. (2023)'s baseline, the pick at the end of ``budget`` epochs: half the budget screens random
    points for one epoch each, the best K = (half the budget) / epochs of them train to the end."""
    sign = 1.0 if SELECT[metric] == "max" else -1.0
    k = max(1, budget // 2 // grid.epochs)
    n = max(k, budget - k * (grid.epochs - 1))  # the K finalists' first epoch is part of the screening
    screened = [(int(rng.integers(len(grid.points))), int(rng.integers(grid.seeds))) for _ in range(n)]
    first = [sign * grid.curves[p][s][metric][0] if grid.curves[p][s][metric] else -math.inf for p, s in screened]
    finalists = sorted(range(n), key=lambda i: -first[i])[:k]
    done = [(max(sign * v for v in grid.curves[p][s][metric]), p) for p, s in (screened[i] for i in finalists)
            if not grid.failed[p][s]]
    seconds = sum(grid.seconds(p, s, 1) for p, s in screened)
    seconds += sum(grid.seconds(p, s, e) for p, s in (screened[i] for i in finalists)
                   for e in range(2, grid.epochs + 1))
    return (max(done)[1] if done else None), seconds


# the confirmation stages replayed after the shipped exploration: (share of the budget, candidates)
CONFIRMATIONS = ((0.25, 2), (0.25, 3), (0.375, 2), (0.375, 3), (0.5, 2), (0.5, 4))


@dataclass(frozen=True)
class Strategy:
    name: str
    metric: str  # what TPE and ASHA optimize
    select: str  # how the search's pick is chosen: val_acc, val_ce or tie (see ``choose``)
    # (grid, budget in epochs, workers, rng) -> (pick, seconds)
    run: Callable[[Grid, int, int, np.random.Generator], tuple[int | None, float]]
    default: bool = False  # the search as the space ships it

    @property
    def label(self) -> str:
        return (f"{self.name}, {self.metric}" + ("" if self.select == self.metric else f", pick {self.select}")
                + (", default" if self.default else ""))


def strategies(task: oracle.Task, space: spaces.Space, epochs: int) -> list[Strategy]:
    """The search as it was (TPE + ASHA with the space's former grace period and reduction factor, on validation
    accuracy), the alternatives, each sampling, stopping and selecting on validation accuracy or on validation CE,
    the designs that pick with accuracy ties broken by CE, and the shipped default (the space's own settings)."""
    grace, rf = task.previous_asha
    late = spaces.grace_epochs(space.scheduler, epochs)
    late_rf = int(space.scheduler.get("reduction_factor", 3))

    def search(kind: str, metric: str, asha: tuple[int, int] | None, rule: str) -> Callable[..., Any]:
        def run(grid: Grid, budget: int, workers: int, rng: np.random.Generator) -> tuple[int | None, float]:
            sched = ASHA(grid.epochs, *asha, SELECT[metric]) if asha else None
            sampler = Sampler(grid, kind, metric, rng, space.num_samples)
            return simulate(grid, sampler, sched, metric, workers, budget, rng, rule)
        return run

    out = []
    for metric in SELECT:
        out += [
            Strategy("random", metric, metric, search("random", metric, None, metric)),
            Strategy("tpe", metric, metric, search("tpe", metric, None, metric)),
            Strategy(f"tpe+asha (grace {grace}, rf {rf})", metric, metric, search("tpe", metric, (grace, rf), metric)),
            Strategy(f"tpe+asha (grace {late}, rf {late_rf})", metric, metric,
                     search("tpe", metric, (late, late_rf), metric)),
            Strategy("1-epoch top-K", metric, metric, lambda g, b, w, r, m=metric: top_k(g, m, b, r)),
        ]
    for metric in SELECT:
        out += [
            Strategy("tpe", metric, "tie", search("tpe", metric, None, "tie")),
            *(Strategy(f"tpe+asha (grace {late}, rf {late_rf})", metric, rule,
                       search("tpe", metric, (late, late_rf), rule)) for rule in TIE_RULES),
        ]
    shipped = f"tpe+asha (grace {late}, rf {late_rf})" if space.scheduler["name"] == "asha" else "tpe"

    def confirming(share: float, candidates: int, rule: str) -> Callable[..., Any]:
        asha = (late, late_rf) if space.scheduler["name"] == "asha" else None

        def run(grid: Grid, budget: int, workers: int, rng: np.random.Generator) -> tuple[int | None, float]:
            b = budget // grid.epochs
            t = confirm_trainings(share, b)
            sched = ASHA(grid.epochs, *asha, SELECT[space.metric]) if asha else None
            sampler = Sampler(grid, "tpe", space.metric, rng, space.num_samples)
            trials, seconds = run_trials(grid, sampler, sched, space.metric, min(b - t, workers),
                                         (b - t) * grid.epochs, rng)
            if not t:
                return choose(grid, trials, rule), seconds
            pick, more = confirmed(grid, trials, rule, t, candidates, rng)
            return pick, seconds + more
        return run

    for share, candidates in CONFIRMATIONS:
        for rule in (space.metric, "tie", "tie_ce"):
            out.append(Strategy(f"{shipped} + confirm {share:g} of the budget, {candidates} best", space.metric, rule,
                                confirming(share, candidates, rule)))
    default = (space.confirm_share, space.confirm_candidates)
    rule = {v: k for k, v in TIE_RULES.items()}.get(space.rule, space.metric)  # the shipped rule, by its name here
    return [replace(s, default=True) if (s.name, s.metric, s.select) == (
        f"{shipped} + confirm {default[0]:g} of the budget, {default[1]} best" if default[0] else shipped,
        space.metric, rule) else s for s in out]


class _Pause(Exception):
    """Raised from ``engine.fit``'s report to end a PBT member's interval; carries its checkpoint."""


def pbt_member(cfg: Any, until: int, resume: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
    """Train a member to epoch ``until`` (from ``resume``); its checkpoint (a copy), or None when it failed."""
    def report(row: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        if row["epoch"] >= until:
            raise _Pause(copy.deepcopy(checkpoint))
    try:
        engine.fit(cfg, report, resume=resume)
    except _Pause as p:
        return p.args[0], True
    except engine.Diverged:
        return resume, False
    return resume, False


def pbt(name: str, population: int, metric: str, rng: np.random.Generator) -> dict[str, Any]:
    """Population based training as Ray's ``PopulationBasedTraining`` runs it for the platform, trained for real:
    every ``interval`` epochs the bottom quarter continue from a top-quarter member's checkpoint with its
    configuration, whose loss and optimizer values are then explored (each: resampled with probability 0.25, else
    moved to a neighbouring grid value). The pick is the member whose best epoch is best; its final configuration
    is what ``best_config`` hands to production, so the regret is that configuration's oracle figure."""
    task = oracle.TASKS[name]
    points = task.points()
    space = spaces.load(task.space)
    epochs = task.epochs
    interval = max(1, epochs // 10)
    sign = 1.0 if SELECT[metric] == "max" else -1.0
    members = [{"point": dict(points[int(rng.integers(len(points)))]), "seed": int(rng.integers(len(task.seeds))),
                "state": None, "alive": True, "best": -math.inf} for _ in range(population)]
    for start in range(0, epochs, interval):
        until = min(epochs, start + interval)
        for m in (m for m in members if m["alive"]):
            values = [f"seed={m['seed']}", *(f"{k}={v}" for k, v in m["point"].items())]
            cfg = space.base_config([*task.overrides, *values])
            m["state"], m["alive"] = pbt_member(cfg, until, m["state"])
            if m["alive"]:
                m["best"] = max(m["best"], sign * m["state"]["history"][-1][metric])
        if until == epochs:
            break
        ranked = sorted((m for m in members if m["alive"]), key=lambda m: sign * m["state"]["history"][-1][metric])
        q = int(len(ranked) * 0.25) if len(ranked) >= 4 else int(len(ranked) >= 2)
        for low, high in zip(ranked[:q], reversed(ranked[-q:])):  # a failed member stays failed, as under Ray
            low.update(point=explore(high["point"], task, rng), seed=high["seed"], state=copy.deepcopy(high["state"]))
    done = [m for m in members if m["alive"]]
    best = max(done, key=lambda m: m["best"]) if done else None
    return {"population": population, "metric": metric, "pick": best and best["point"]}


def explore(point: dict[str, Any], task: oracle.Task, rng: np.random.Generator) -> dict[str, Any]:
    """Ray PBT's explore step on a grid: each mutable value resampled (p = 0.25) or moved one grid step."""
    out = dict(point)
    for key, values in task.grid.items():
        if not key.startswith(spaces.MUTABLE):
            continue
        if rng.random() < 0.25:
            out[key] = values[int(rng.integers(len(values)))]
        else:
            i = values.index(out[key]) + (1 if rng.random() < 0.5 else -1)
            out[key] = values[min(max(i, 0), len(values) - 1)]
    if out.get("loss.lam") == 0:
        out["loss.bandwidth"] = "median"
    return out


# regret.json's key -> production figure (``Grid.figures``)
HANDOFFS = {"regret": "kept", "regret_full": "full", "regret_full_last": "full_last", "regret_last": "last"}


def regrets(grid: Grid, picks: list[int | None], rule: str) -> dict[str, dict[str, list[float]]]:
    """The regret of each pick on both test figures, for every hand-off (``HANDOFFS``)."""
    return {key: {fig: [grid.regret(p, fig, which, rule) for p in picks] for fig in FIGURES}
            for key, which in HANDOFFS.items()}


def evaluate(grid: Grid, strategy: Strategy, reps: int, workers: int) -> dict[str, Any]:
    """Every repetition's regret at each budget, on both test figures and every hand-off. A budget of b full
    trainings runs min(b, ``workers``) trials side by side, so that a search of b trials without early stopping
    ends them all."""
    out: dict[str, Any] = {key: {fig: [] for fig in FIGURES} for key in HANDOFFS}
    seconds = []
    for rep in range(reps):
        picks = []
        for b in BUDGETS:
            rng = np.random.default_rng([rep, b, zlib.crc32(strategy.label.encode())])
            picks.append(strategy.run(grid, b * grid.epochs, min(b, workers), rng))
        for key, figs in regrets(grid, [p for p, _ in picks], strategy.select).items():
            for fig, values in figs.items():
                out[key][fig].append(values)
        seconds.append([round(sec, 2) for _, sec in picks])
    return {"strategy": strategy.label, "metric": strategy.metric, "budgets": list(BUDGETS), **out,
            "seconds": seconds}


def pbt_rows(name: str, grid: Grid, reps: int, budgets: list[int], cache_path: Path) -> list[dict[str, Any]]:
    """PBT's regret per selection metric at ``budgets`` (population = budget in full trainings), trained for real;
    every finished repetition is cached in ``cache_path``."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rows = []
    for metric in SELECT:
        out: dict[str, Any] = {key: {fig: [] for fig in FIGURES} for key in HANDOFFS}
        for rep in range(reps):
            picks = []
            for b in budgets:
                key = f"{name}|{metric}|{b}|{rep}"
                if key not in cache:
                    cache[key] = pbt(name, b, metric, np.random.default_rng([rep, b, zlib.crc32(metric.encode())]))
                    cache_path.write_text(json.dumps(cache, indent=1))
                    print(f"   pbt {key}: {cache[key]['pick']}", flush=True)
                pick = cache[key]["pick"]
                picks.append(None if pick is None else grid.index(pick))
            for k, figs in regrets(grid, picks, metric).items():
                for fig, values in figs.items():
                    out[k][fig].append(values)
        rows.append({"strategy": f"pbt (trained; population = budget), {metric}", "metric": metric,
                     "budgets": budgets, **out})
    return rows


def every_point(grid: Grid, rule: str, reps: int) -> dict[str, float]:
    """The reference no search of one training per configuration can beat: every grid point trained once (a seed
    drawn at random), the pick by ``rule``; the median regret over ``reps`` draws, kept checkpoint."""
    out: dict[str, list[float]] = {fig: [] for fig in FIGURES}
    for rep in range(reps):
        rng = np.random.default_rng([rep, zlib.crc32(rule.encode())])
        trials = [Trial(p, int(rng.integers(grid.seeds))) for p in range(len(grid.points))]
        ended = [t for t in trials if not grid.failed[t.point][t.seed]]
        for t in ended:
            t.epoch = len(grid.curves[t.point][t.seed]["val_ce"])
        pick = choose(grid, ended, rule)
        for fig in FIGURES:
            out[fig].append(grid.regret(pick, fig, "kept", rule))
    return {fig: float(np.median(v)) for fig, v in out.items()}


def to_noise(row: dict[str, Any], grid: Grid, fig: str, key: str = "regret") -> int | None:
    """The smallest budget (full trainings) at which the median regret is within the oracle's seed noise."""
    med = np.median(np.array(row[key][fig]), axis=0)
    return next((b for b, m in zip(row["budgets"], med) if m <= grid.noise[fig]), None)


def at_budget(row: dict[str, Any], key: str, fig: str, budget: int) -> float:
    """The median regret of a row at ``budget`` full trainings (NaN where the row has no such budget)."""
    if budget not in row["budgets"]:
        return math.nan
    return float(np.median(np.array(row[key][fig]), axis=0)[row["budgets"].index(budget)])


def itra_against_ce(grid: Grid, rule: str = SHIPPED_RULE) -> dict[str, Any]:
    """ITRA against plain CE under the same selection, on validation: in each arm (the points with lambda = 0, and
    those with lambda > 0) the point ``rule`` selects by its validation figures at its selected epochs (mean over
    the seeds), and that point's test figures at those epochs, with the seeds' spread. The test split chooses
    nothing; the ITRA arm has more points to choose from, which favours it a little on validation."""
    lam = np.array([p.get("loss.lam", 0.0) for p in grid.points])
    out: dict[str, Any] = {"rule": rule}
    for name, mask in (("ce", lam == 0), ("itra", lam > 0)):
        rows = [{"point": int(i), "val_acc": float(grid.val[rule]["val_acc"][i]),
                 "val_ce": float(grid.val[rule]["val_ce"][i]), selection.COUNT: VAL_SIZE[grid.name]}
                for i in np.flatnonzero(mask)]
        i = selection.best(rows, rule_of(rule))["point"]
        out[name] = {"point": grid.points[i], "points": len(rows), "val_ce": float(grid.val[rule]["val_ce"][i]),
                     "val_acc": float(grid.val[rule]["val_acc"][i]),
                     **{fig: float(grid.kept[rule][fig][i]) for fig in FIGURES},
                     **{f"{fig}_seed_sd": float(grid.spread_by[rule][fig][i]) for fig in FIGURES}}
    return out


def plot(name: str, noise: dict[str, float], epochs: int, rows: list[dict[str, Any]], path: Path) -> None:
    """Median regret over compute with the repetitions' interquartile range, one panel per test figure and
    selection metric; of the confirmations, the shipped one and its tie-rule variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shipped = next((r["strategy"].rsplit(", val_ce", 1)[0] for r in rows if "confirm" in r["strategy"]
                    and "default" in r["strategy"]), None)
    rows = [r for r in rows if "confirm" not in r["strategy"] or (shipped and r["strategy"].startswith(shipped))]
    fig_, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for col, metric in enumerate(SELECT):
        for row_i, fig in enumerate(("test_acc", "test_ce")):
            ax = axes[row_i][col]
            scale = 100 if fig == "test_acc" else 1
            for r in (r for r in rows if r["metric"] == metric):
                reg = np.array(r["regret"][fig]) * scale
                med, lo, hi = np.median(reg, 0), np.percentile(reg, 25, 0), np.percentile(reg, 75, 0)
                line, = ax.plot(r["budgets"], med, marker="o", label=r["strategy"])
                ax.fill_between(r["budgets"], lo, hi, color=line.get_color(), alpha=0.12)
            ax.axhline(noise[fig] * scale, color="grey", ls="--", lw=1, label="oracle seed noise")
            ax.set_xscale("log", base=2)
            ax.set_title(f"selected on {metric}: {fig} regret" + (" (points)" if fig == "test_acc" else ""))
            ax.set_xlabel(f"compute, full trainings of {epochs} epochs")
    axes[0][0].legend(fontsize=7)
    axes[0][1].legend(fontsize=7)
    fig_.suptitle(f"{name}: regret of the configuration each search selects (median, 25-75% of repetitions)")
    fig_.tight_layout()
    fig_.savefig(path, dpi=90)
    plt.close(fig_)


def _cell(v: float, noise: float, scale: float, digits: int) -> str:
    """A median regret for a table, ✗ where it is above 1.5x the seed noise."""
    return "-" if math.isnan(v) else f"{scale * v:.{digits}f}" + (" ✗" if v > 1.5 * noise else "")


def _across(label: str, rows: list[dict[str, Any]]) -> str:
    """A strategy's label as the tasks share it: the shipped ASHA's grace (a third of the task's epochs) as
    ``grace 1/3``, the other (the former, early one) as ``early grace``."""
    shipped = next((re.search(r"\(grace \d+, rf \d+\)", r["strategy"]) for r in rows if "default" in r["strategy"]),
                   None)
    if shipped:
        label = label.replace(shipped.group(0), "(grace 1/3)")
    return re.sub(r"\(grace \d+, rf \d+\)", "(early grace)", label)


def tables(report: dict[str, Any], budgets: tuple[int, ...] = (4, 8, 16, 32), at: int = 16) -> str:
    """The report's (``regret.json``'s) tables in Markdown: every strategy at ``at`` full trainings on every task,
    then, per task, the shipped designs at each of ``budgets``; median regret of the kept checkpoint, accuracy in
    points / CE, ✗ above 1.5x the task's seed noise."""
    tasks = list(report)
    made = sorted({(r.get("commit", "?")[:7], r.get("loss_form", "?")) for r in report.values()})
    head = "(" + "; ".join(f"at {c}, loss form `{f}`" for c, f in made) + ")"
    lines = [f"Median regret at {at} full trainings, kept checkpoint {head}:", "",
             "| strategy | " + " | ".join(f"{t} acc | {t} CE" for t in tasks) + " |",
             "|---|" + "---|---|" * len(tasks)]
    named = {t: {_across(r["strategy"], report[t]["rows"]): r for r in report[t]["rows"]} for t in tasks}
    for label in dict.fromkeys(k for t in tasks for k in named[t]):
        cells = []
        for t in tasks:
            row = named[t].get(label)
            noise = report[t]["noise"]
            cells += [_cell(at_budget(row, "regret", f, at), noise[f], *((100, 2) if f == "test_acc" else (1, 4)))
                      if row else "-" for f in FIGURES]
        name = f"**{label}**" if "default" in label else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"By budget (full trainings, the confirmation's included) {head}:", ""]
    lines += ["| task | strategy | " + " | ".join(f"{b}: acc / CE" for b in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
    for t in tasks:
        noise = report[t]["noise"]
        for row in report[t]["rows"]:
            label = _across(row["strategy"], report[t]["rows"])
            # the former default (explore alone), the tie rule on it, the confirmations of a quarter of the budget
            if not (label.startswith("tpe+asha (grace 1/3), val_ce") or "confirm 0.25 " in label):
                continue
            cells = [" / ".join(_cell(at_budget(row, "regret", f, b), noise[f], *((100, 2) if f == "test_acc"
                                                                                 else (1, 4))) for f in FIGURES)
                     for b in budgets]
            lines.append(f"| {t} | {label} | " + " | ".join(cells) + " |")
    rules = sorted({report[t]["itra_vs_ce"].get("rule", "val_ce") for t in tasks})
    lines += ["", f"ITRA against CE under the same selection (rule {', '.join(rules)}: each arm's point by its "
              "validation figures' means over its seeds, each seed at its selected epoch; test figures mean ± std "
              "over the seeds):", "",
              "| task | CE: test acc % | ITRA: test acc % | CE: test CE | ITRA: test CE | ITRA's point |",
              "|---|---|---|---|---|---|"]
    for t in tasks:
        ce, itra = report[t]["itra_vs_ce"]["ce"], report[t]["itra_vs_ce"]["itra"]
        lines.append(f"| {t} | {100 * ce['test_acc']:.2f} ± {100 * ce['test_acc_seed_sd']:.2f} | "
                     f"{100 * itra['test_acc']:.2f} ± {100 * itra['test_acc_seed_sd']:.2f} | "
                     f"{ce['test_ce']:.4f} ± {ce['test_ce_seed_sd']:.4f} | {itra['test_ce']:.4f} ± "
                     f"{itra['test_ce_seed_sd']:.4f} | {oracle.point_key(itra['point'])} |")
    lines += ["", "Seed noise (accuracy points / CE): " + ", ".join(
        f"{t} {100 * report[t]['noise']['test_acc']:.2f} / {report[t]['noise']['test_ce']:.4f}" for t in tasks), "",
        "Made by:", ""]
    lines += [f"    {c}" for c in dict.fromkeys(report[t].get("command", "?") for t in tasks)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_quality", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(oracle.TASKS))
    p.add_argument("--reps", type=int, default=20, help="repetitions of each replayed strategy")
    p.add_argument("--only", default="", help="replay only the strategies whose label contains one of these "
                                               "comma-separated words (default: all)")
    p.add_argument("--pbt-reps", type=int, default=5, help="repetitions of population based training (trained)")
    p.add_argument("--pbt-budgets", default="8", help="populations of PBT, in full trainings")
    p.add_argument("--oracle", type=Path, default=oracle.OUT)
    p.add_argument("--seeds", type=int, help="replay each task's first N seeds only (an oracle trained with fewer)")
    p.add_argument("--oracle-full", type=Path, default=oracle.FULL_OUT,
                   help="the full-train grid, where it was run (none: score the kept checkpoint only)")
    p.add_argument("--out", type=Path, default=oracle.OUT.parent)
    p.add_argument("--tables", type=Path, nargs="+", help="print the Markdown tables of reports (regret.json; "
                                                            "several are merged, by task) and exit")
    p.add_argument("--merge", type=Path, help="with --tables: also write the merged report here")
    args = p.parse_args(argv)
    if args.tables:
        merged = {t: r for path in args.tables for t, r in json.loads(path.read_text()).items()}
        if args.merge:  # and the curves beside it
            args.merge.write_text(json.dumps(merged, separators=(",", ":")))
            for name, r in merged.items():
                plot(name, r["noise"], r["epochs"], r["rows"], args.merge.parent / f"{name}_regret.png")
        print(tables(merged))
        return 0
    command = "python -m benchmarks.search_quality " + " ".join(argv if argv is not None else sys.argv[1:])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
    loss_form = json.loads(args.oracle.read_text()).get("loss_form") if args.oracle.is_file() else None
    runs = oracle.load(args.oracle)
    full_runs = {} if str(args.oracle_full) == "none" else oracle.load(args.oracle_full)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for name in args.tasks.split(","):
        if args.seeds:
            oracle.TASKS[name] = replace(oracle.TASKS[name], seeds=oracle.TASKS[name].seeds[:args.seeds])
        task = oracle.TASKS[name]
        grid = Grid.load(name, runs, full_runs)
        space = spaces.load(task.space)
        print(f"\n== {name}: {len(grid.points)} points x {grid.seeds} seeds, {grid.epochs} epochs"
              + ("" if grid.full is not None else " (no full-train grid: run benchmarks.oracle --full-train)"),
              flush=True)
        best = {}
        for f in FIGURES:
            values = grid.kept[DEFAULT_RULE][f]
            i = int(np.argmax(values) if f == "test_acc" else np.argmin(values))
            by_rule = {r: grid.best("kept", f, r) for r in RULES}
            best[f] = {"point": grid.points[i], "value": float(values[i]), "noise": grid.noise[f],
                       "best_by_rule": by_rule, "best_last_epoch": grid.best("last", f),
                       "best_full_train": {r: grid.best("full", f, r) for r in RULES} if grid.full else None,
                       "best_full_train_last_epoch": grid.best("full_last", f) if grid.full else None}
            print(f"   oracle best {f} (kept checkpoint, by {DEFAULT_RULE}): {values[i]:.4f} (seed noise "
                  f"{grid.noise[f]:.4f}) at {oracle.point_key(grid.points[i])}; by rule "
                  + ", ".join(f"{r} {v:.4f}" for r, v in by_rule.items()) + f"; last epoch {grid.best('last', f):.4f}"
                  + (f"; full-train to the selected epoch {grid.best('full', f):.4f}, to the last "
                     f"{grid.best('full_last', f):.4f}" if grid.full is not None else ""))
        fair = {rule: itra_against_ce(grid, rule) for rule in dict.fromkeys((SHIPPED_RULE, DEFAULT_RULE))}
        for rule, arms in fair.items():
            for arm in ("ce", "itra"):
                r = arms[arm]
                print(f"   {arm:>4} chosen by {rule} ({r['points']} points): {oracle.point_key(r['point'])}, "
                      f"test acc {100 * r['test_acc']:.2f} ± {100 * r['test_acc_seed_sd']:.2f}, test CE "
                      f"{r['test_ce']:.4f} ± {r['test_ce_seed_sd']:.4f} (mean ± std over the seeds, each at its "
                      f"epoch)")
        ceiling = {rule: every_point(grid, rule, args.reps) for rule in RULES}
        for rule, r in ceiling.items():
            times = {fig: r[fig] / grid.noise[fig] for fig in FIGURES}
            print(f"   every point trained once ({len(grid.points)} trainings), pick {rule}: median regret "
                  f"{100 * r['test_acc']:.2f} points, {r['test_ce']:.4f} CE ({times['test_acc']:.1f}x and "
                  f"{times['test_ce']:.1f}x the seed noise)")
        words = [w for w in args.only.split(",") if w]
        rows = [evaluate(grid, s, args.reps, task.max_concurrent) for s in strategies(task, space, grid.epochs)
                if not words or any(w in s.label for w in words)]
        if args.pbt_reps:
            rows += pbt_rows(name, grid, args.pbt_reps, [int(b) for b in args.pbt_budgets.split(",")],
                             args.out / f"pbt-{name}.json")
        report[name] = {"command": command, "commit": commit, "loss_form": loss_form or "unrecorded",
                        "selection_rule": spaces.DEFAULT_RULE,
                        "best": best, "epochs": grid.epochs, "noise": grid.noise, "itra_vs_ce": fair[SHIPPED_RULE],
                        "itra_vs_ce_by_rule": fair,
                        "every_point_once": ceiling, "rows": rows}
        print(f"   median regret of the kept checkpoint over {args.reps} repetitions at {list(BUDGETS)} full trainings:"
              f" test accuracy (points) | test CE | the least compute within seed noise, accuracy | CE | at 16: "
              f"full-train acc, CE | full-train to the last epoch acc, CE | last epoch (former score) acc, CE | "
              f"median seconds")
        for r in rows:
            acc = np.median(np.array(r["regret"]["test_acc"]), axis=0) * 100
            ce = np.median(np.array(r["regret"]["test_ce"]), axis=0)
            sec = (" ".join(f"{v:4.0f}" for v in np.median(np.array(r["seconds"]), axis=0)) + " s"
                   if "seconds" in r else "")
            at16 = " ".join(f"{100 * at_budget(r, k, 'test_acc', 16):5.2f} {at_budget(r, k, 'test_ce', 16):5.3f}"
                            for k in ("regret_full", "regret_full_last", "regret_last"))
            print(f"   {r['strategy']:<48} " + " ".join(f"{v:5.2f}" for v in acc) + " | "
                  + " ".join(f"{v:5.3f}" for v in ce) + f" | within noise at {to_noise(r, grid, 'test_acc')} | "
                  f"{to_noise(r, grid, 'test_ce')} | {at16} | {sec}" + ("" if r["budgets"] == list(BUDGETS) else
                                                                          f" (budgets {r['budgets']})"))
        plot(name, grid.noise, grid.epochs, rows, args.out / f"{name}_regret.png")
    (args.out / "regret.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
