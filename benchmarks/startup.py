"""Where a small search's time goes, from the process start to its exit, against the tools underneath it.

    python -m benchmarks.startup [--trials 8] [--rounds 3] [--epochs 1] [--space demo] [--out FILE]
                                 [--baseline PATH]

Three contenders run the same trials (the space's Optuna sampler, seeded; ``train.epochs`` = ``--epochs``), each
as a fresh interpreter, in alternating rounds; medians over the rounds:

- ``search``: ``python -m itra_tune.search --space S --num-samples N``, exactly as a user types it, in a new
  folder (a new MLflow store), with clocks around its phases (imports, argument parsing and checks, Ray's start,
  MLflow and the Optuna study, Tune until the first trial starts, the trials, Tune's wind-up, the record, Ray's
  shutdown, the interpreter's exit) and the trials' own start-up and training seen from inside them;
- ``search-1``: the same with one trial (a search's fixed cost beyond its training);
- ``optuna``: a bare Optuna study calling ``engine.fit`` one trial after another in one process;
- ``tune``: bare Ray Tune, ``OptunaSearch`` and the engine as a function trainable, Tune's defaults;
- ``raytune``, ``raytune-1``: the same with the settings the search gives Tune (actors reused, one CPU a trial,
  dashboard and driver logs off): what Ray itself costs these trials, the floor under ``search`` and ``search-1``;
- ``baseline``, ``baseline-1``: ``search`` and ``search-1`` with itra_tune imported from ``--baseline PATH``, a
  checkout of another revision (``git worktree add /tmp/before REV``), in the same alternating rounds.

The clocks are wrappers this program puts around the search's own functions in the child process; nothing in
itra_tune measures itself. Wall times on a shared machine vary; the ratios in one run are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0_ENV = "ITRA_BENCH_T0"  # the parent's clock just before it started the child
CONTENDERS = ("search", "search-1", "optuna", "tune", "raytune", "raytune-1")


# --- the children ---------------------------------------------------------------------------------------------

class Clock:
    """Named spans on the wall clock (time.time: comparable across processes), written as JSON at exit."""

    def __init__(self, out: Path) -> None:
        self.out, self.spans, self.marks = out, [], {"start": float(os.environ[T0_ENV]), "child": time.time()}

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def wrap(self, owner: object, attr: str, name: str | None = None) -> None:
        fn = getattr(owner, attr)
        clock = self

        def timed(*args, **kwargs):
            t = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.spans.append((name or attr, t, time.time()))

        setattr(owner, attr, timed)

    def write(self) -> None:
        self.out.write_text(json.dumps({"marks": self.marks, "spans": self.spans}))


def child_search(out: Path, argv: list[str]) -> int:
    import atexit

    clock = Clock(out)
    atexit.register(lambda: (clock.mark("ray_shutdown_end"), clock.write()))  # runs after Ray's own handler
    from itra_tune import cli
    from itra_tune.search import command

    clock.mark("imported")
    from itra_tune import data, plots, tracking
    from itra_tune.search import record, study, tuner

    clock.wrap(tuner, "init_ray", "ray_start")
    clock.wrap(study, "create", "optuna_study")
    clock.wrap(tuner, "run_experiment", "tune")
    clock.wrap(record, "record", "record")
    clock.wrap(data, "build", "data_build")
    clock.wrap(plots, "tsne", "tsne")
    clock.wrap(record, "_figures", "figures")
    clock.wrap(record, "_model_files", "model_export")
    clock.wrap(tracking.Tracker, "__init__", "tracker")
    clock.wrap(tracking.Tracker, "finish_trial", "finish_trial")
    clock.wrap(tracking.Tracker, "finish", "finish_parent")
    clock.wrap(tracking, "resolve_uri", "resolve_uri")
    trials: dict[str, dict[str, float]] = {}

    def started(self, trial, **info):  # Tune calls its callbacks with keywords
        trials.setdefault(trial.trial_id, {})["launched"] = time.time()
        return launched(self, trial=trial, **info)

    def result(self, trial, result, **info):
        t = trials.setdefault(trial.trial_id, {})
        t["training"] = t.get("training", 0.0) + float(result.get("epoch_time", 0.0))
        return reported(self, trial=trial, result=result, **info)

    def ended(self, trial, **info):
        last = trial.last_result or {}
        trials.setdefault(trial.trial_id, {}).update(ended=time.time(), own=float(last.get("time_total_s", 0.0)))

    launched, reported = tuner.TrackingCallback.on_trial_start, tuner.TrackingCallback.on_trial_result
    tuner.TrackingCallback.on_trial_start = started
    tuner.TrackingCallback.on_trial_result = result
    tuner.TrackingCallback.on_trial_complete = ended
    tuner.TrackingCallback.on_trial_error = ended

    def main(args):
        try:
            return command.main(args)
        finally:
            clock.mark("main_end")
            clock.marks["trials"] = trials

    import ray  # noqa: F401 - registers Ray's exit handler after ours, so it runs first

    atexit.register(lambda: clock.mark("exit_handlers"))  # runs before Ray's shutdown
    code = cli.run(command.PROG, main, argv)
    getattr(cli, "exit_now", sys.exit)(code)  # as python -m itra_tune.search ends (a baseline's: sys.exit)


def trial_configs(space: str, n: int, epochs: int, threads: int) -> list:
    """The configurations the space's sampler proposes, one after another (TPE, seeded), told each result."""
    import optuna

    from itra_tune import config, engine, spaces
    from itra_tune.search import tuner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sp = spaces.load(space)
    base = config.apply_overrides(sp.base, [f"train.epochs={epochs}", f"train.threads={threads}"])
    study = optuna.create_study(direction="minimize" if sp.mode == "min" else "maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=min(5, max(1, n // 2))))
    define = tuner.DefineByRun(sp.params)
    for _ in range(n):
        trial = study.ask()
        define(trial)
        cfg = config.override(config.from_dict(base, "bench"), dict(trial.params), "bench")
        result = engine.fit(cfg)
        study.tell(trial, result.best[sp.metric])
    return study.trials


def child_optuna(out: Path, space: str, n: int, epochs: int) -> int:
    clock = Clock(out)
    trial_configs(space, n, epochs, threads=os.cpu_count() or 1)
    clock.mark("main_end")
    clock.write()
    return 0


def tune_trial(config: dict) -> None:
    from ray import tune

    from itra_tune import config as config_mod
    from itra_tune import engine

    cfg = config_mod.override(config_mod.from_dict(config["base"], "bench"),
                              {k: v for k, v in config.items() if k != "base"}, "bench")
    engine.fit(cfg, report=lambda metrics, state: tune.report(metrics))


def child_tune(out: Path, space: str, n: int, epochs: int, floor: bool = False) -> int:
    """Bare Ray Tune on the trials; ``floor``: with the search's own Tune settings (``raytune``)."""
    clock = Clock(out)
    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from itra_tune import config, spaces
    from itra_tune.search import tuner

    sp = spaces.load(space)
    base = config.apply_overrides(sp.base, [f"train.epochs={epochs}", "train.threads=1"])
    searcher = OptunaSearch(space=tuner.DefineByRun(sp.params), metric=sp.metric, mode=sp.mode,
                            sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=min(5, max(1, n // 2))))
    trainable, settings = tune_trial, {}
    if floor:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        trainable = tune.with_resources(tune_trial, {"cpu": sp.cpus_per_trial})
        settings = {"reuse_actors": True}
    tune.Tuner(trainable, param_space={"base": base},
               tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, sp.max_concurrent),
                                           num_samples=n, **settings),
               run_config=tune.RunConfig(storage_path=str(Path.cwd() / "tune"), verbose=0)).fit()
    clock.mark("main_end")
    clock.write()
    return 0


# --- the parent -------------------------------------------------------------------------------------------------

def run_child(contender: str, trials: int, epochs: int, space: str, baseline: Path | None = None) -> dict:
    """One fresh interpreter running ``contender`` in a new folder: its wall time and its clocks."""
    with tempfile.TemporaryDirectory(prefix="itra-startup-") as tmp:
        out = Path(tmp) / "clock.json"
        n = 1 if contender.endswith("-1") else trials
        kind = contender.partition("-")[0]
        tree = baseline if kind == "baseline" else Path(__file__).resolve().parents[1]
        child = {"baseline": "search"}.get(kind, kind)
        args = [sys.executable, str(Path(__file__).resolve()), "--child", child,
                "--clock", str(out), "--trials", str(n), "--epochs", str(epochs), "--space", space]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env[T0_ENV] = repr(time.time())
        t0 = time.perf_counter()
        done = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{contender} failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                             f"{done.stderr[-3000:]}")
        clock = json.loads(out.read_text())
        clock["wall"] = wall
        clock["end"] = clock["marks"]["start"] + wall
        return clock


def span(clock: dict, name: str) -> list[tuple[float, float]]:
    return [(a, b) for n, a, b in clock["spans"] if n == name]


def total(clock: dict, name: str, within: tuple[float, float] | None = None) -> float:
    return sum(b - a for a, b in span(clock, name) if within is None or (a >= within[0] and b <= within[1]))


def phases(clock: dict) -> dict[str, float]:
    """A search's wall time cut into phases that add up to it."""
    m = clock["marks"]
    (ray0, ray1), = span(clock, "ray_start")
    tunes = span(clock, "tune")  # the exploration, then the confirmation's own experiment when it runs one
    tune0, tune1 = tunes[0][0], tunes[-1][1]
    (rec0, rec1), = span(clock, "record")
    trials = list(m.get("trials", {}).values())
    first = min(t["launched"] for t in trials)
    last = max(t["ended"] for t in trials)
    # between the exploration's last trial and the confirmation's first: the one Tune ends, the other starts
    between = 0.0
    if len(tunes) > 1:
        explored = max(t["ended"] for t in trials if t["ended"] <= tunes[0][1])
        confirming = min(t["launched"] for t in trials if t["launched"] >= tunes[1][0])
        between = confirming - explored
    study = total(clock, "optuna_study")
    out = {
        "interpreter start": m["child"] - m["start"],
        "imports (itra_tune.search.command)": m["imported"] - m["child"],
        "argument parsing, checks": ray0 - m["imported"],
        "Ray start": ray1 - ray0,
        "MLflow set-up": tune0 - ray1 - study,
        "Optuna study": study,
        "Tune until the first trial starts": first - tune0,
        "trials (first start to last end)": last - first,
        "Tune wind-up": tune1 - last,
        "summary before the record": rec0 - tune1,
        "record": rec1 - rec0,
        "summary printed": m["main_end"] - rec1,
        "exit handlers (Ray shutdown)": m["ray_shutdown_end"] - m["main_end"],
        "interpreter exit": clock["end"] - m["ray_shutdown_end"],
    }
    within = (rec0, rec1)
    model_logging = total(clock, "finish_trial", within)
    out.update({
        "  record: data rebuilt": total(clock, "data_build", within),
        "  record: trials' runs and LoggedModels": model_logging,
        "  record: of which model export": total(clock, "model_export", within),
        "  record: figures": total(clock, "figures", within),
        "  record: t-SNE": total(clock, "tsne", within),
        "  record: parent run's files": total(clock, "finish_parent", within),
        "  trials: from exploring to confirming (one Tune run ends, the next starts)": between,
        "  trials: each trial's own time (mean)": statistics.mean(t["own"] for t in trials),
        "  trials: each trial's training (mean)": statistics.mean(t["training"] for t in trials),
    })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--space", default="demo")
    p.add_argument("--only", default=",".join(CONTENDERS), help=f"contenders, of {', '.join(CONTENDERS)}")
    p.add_argument("--out", type=Path, help="also write the tables (markdown) to this file")
    p.add_argument("--baseline", type=Path, help="a checkout of another revision, run as the baseline contenders")
    p.add_argument("--child", choices=("search", "optuna", "tune", "raytune"), help=argparse.SUPPRESS)
    p.add_argument("--clock", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "search":
        return child_search(args.clock, ["--space", args.space, "--num-samples", str(args.trials),
                                         "--set", f"train.epochs={args.epochs}"])
    if args.child == "optuna":
        return child_optuna(args.clock, args.space, args.trials, args.epochs)
    if args.child in ("tune", "raytune"):
        return child_tune(args.clock, args.space, args.trials, args.epochs, floor=args.child == "raytune")

    contenders = [c for c in args.only.split(",") if c] + (["baseline", "baseline-1"] if args.baseline else [])
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    for r in range(args.rounds):
        for c in contenders:
            runs[c].append(run_child(c, args.trials, args.epochs, args.space, args.baseline))
            print(f"round {r + 1}/{args.rounds}: {c} {runs[c][-1]['wall']:.2f} s", file=sys.stderr, flush=True)

    lines = [f"{args.trials} trials of {args.epochs} epoch(s) on the {args.space} space, {args.rounds} alternating "
             f"rounds, {os.cpu_count()} CPUs; medians (min-max)", "",
             "| contender | wall s | vs optuna | vs raytune (Ray's floor) |", "|---|---|---|---|"]
    walls = {c: statistics.median(x["wall"] for x in runs[c]) for c in contenders}
    for c in contenders:
        w = [x["wall"] for x in runs[c]]
        ratio = f"{walls[c] / walls['optuna']:.2f}x" if "optuna" in walls and not c.endswith("-1") else "-"
        floor = "raytune-1" if c.endswith("-1") else "raytune"
        over = f"{walls[c] / walls[floor]:.2f}x" if floor in walls else "-"
        n = 1 if c.endswith("-1") else args.trials
        lines.append(f"| {c} ({n} trials) | {walls[c]:.2f} ({min(w):.2f}-{max(w):.2f}) | {ratio} | {over} |")
    for c, floor in (("search", "raytune"), ("search-1", "raytune-1")):
        if c in walls and floor in walls:
            lines.append(f"\n`{c}` beyond Ray's floor (`{floor}`, the same trials under bare Tune): "
                         f"{walls[c] - walls[floor]:.2f} s")
    for c in ("search", "search-1", "baseline", "baseline-1"):
        if c not in runs:
            continue
        table = [phases(x) for x in runs[c]]
        lines += ["", f"phases of `{c}` (s, median of {args.rounds})", "", "| phase | s |", "|---|---|"]
        lines += [f"| {k} | {statistics.median(t[k] for t in table):.2f} |" for k in table[0]]
        beyond = statistics.median(x["wall"] - sum(t["training"] for t in x["marks"]["trials"].values())
                                   for x in runs[c])
        lines.append(f"| wall time beyond the trials' training | {beyond:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
