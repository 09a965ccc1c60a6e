"""Search a space with Ray Tune: ``python -m itra_tune.search --space NAME [options]``.

Optuna (TPE, seeded) samples the space's parameters, a scheduler (ASHA by default) stops weak trials early,
and a concurrency limit bounds the trials in flight. Each trial is ``engine.fit`` behind
``trainable.train_trial``. The search ends with a summary: the best configuration, its validation and test
metrics, how many trials completed, stopped early or failed, the wall time, and where the results are.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ray import tune

from itra_tune import cli, engine, spaces, tracking
from itra_tune import config as config_mod
from itra_tune import results as results_mod
from itra_tune.config import ConfigError
from itra_tune.trainable import train_trial, trial_params

METHOD_KNOBS = {  # each method tunes its own knob in a fair comparison
    "ce": None,
    "lsr": spaces.Param("loss.eps", "float", 0.01, 0.3),
    "center": spaces.Param("loss.lam", "float", 0.005, 0.5, log=True),
    "itra": None,  # keeps the space's own loss.lam range
    "itra_c": None,
}
DEFAULT_STORAGE = Path("runs") / "search"


def parser() -> cli.Parser:
    p = cli.Parser(prog="python -m itra_tune.search", description=__doc__.splitlines()[0])
    p.add_argument("--space", default="demo", help="a name from search_spaces/ or a YAML path (default demo)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the space's budget)")
    p.add_argument("--max-concurrent", type=int, help="trials in flight at once")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="fractions let several small trials share a GPU")
    p.add_argument("--scheduler", choices=spaces.SCHEDULERS, help="early stopping (default: the space's)")
    p.add_argument("--objective", choices=("single", "acc_ce"), default="single",
                   help="acc_ce: validation accuracy (max) and CE (min) together; reports the Pareto front")
    p.add_argument("--methods", help="losses to compare, one search each, e.g. ce,lsr,center,itra_c")
    p.add_argument("--address", help="join an existing Ray cluster (default: start a local one)")
    p.add_argument("--storage-path", help=f"where experiments live, shared on a cluster (default {DEFAULT_STORAGE})")
    p.add_argument("--name", help="experiment name (default <space>-<time>); with --resume, the one to continue")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name after a crash or kill")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the base configuration")
    p.add_argument("--smoke", action="store_true", help="a handful of short trials, to try a space")
    p.add_argument("--max-failures", type=int, default=0, help="retries of a failing trial from its checkpoint")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--register", action="store_true", help="register the best model as itra-<space> in MLflow")
    return p


# --- preparing the space ----------------------------------------------------------------------------


def prepare(args: Any) -> tuple[spaces.Space, config_mod.Config]:
    """The space with command-line settings applied, and its validated base configuration."""
    space = spaces.load(args.space)
    overrides = list(args.set)
    budget: dict[str, Any] = {}
    if args.smoke:
        smoke = dict(space.smoke)
        budget["num_samples"] = int(smoke.pop("num_samples", 3))
        overrides = [f"{k}={v}" for k, v in smoke.items()] + overrides
    for flag, key in (("num_samples", "num_samples"), ("max_concurrent", "max_concurrent"),
                      ("cpus_per_trial", "cpus_per_trial"), ("gpus_per_trial", "gpus_per_trial")):
        value = getattr(args, flag)
        if value is not None:
            budget[key] = value
    if budget.get("num_samples", 1) < 1 or budget.get("max_concurrent", 1) < 1:
        raise ConfigError("--num-samples and --max-concurrent must be at least 1")
    if budget.get("cpus_per_trial", 1) <= 0 or budget.get("gpus_per_trial", 0) < 0:
        raise ConfigError("--cpus-per-trial must be positive and --gpus-per-trial not negative")
    base = config_mod.apply_overrides(space.base, overrides)
    cfg = config_mod.from_dict(base, str(space.path))
    if cfg.data.root is not None:  # trials run in their own folders: make a relative data root absolute
        cfg = config_mod.override(cfg, {"data.root": str(Path(cfg.data.root).expanduser().resolve())})
    scheduler = dict(space.scheduler, name=args.scheduler) if args.scheduler else space.scheduler
    space = replace(space, base=cfg.to_dict(), scheduler=scheduler, **budget)
    engine.check(cfg)
    engine.check_available(cfg)
    return space, cfg


def method_space(space: spaces.Space, method: str) -> spaces.Space:
    """The space for one method of a fair comparison: same budget and shared knobs, its own loss knob."""
    if method not in METHOD_KNOBS:
        raise ConfigError(f"--methods: unknown method {method!r}; choose from {', '.join(METHOD_KNOBS)}")
    shared = [p for p in space.params if not p.key.startswith("loss.")]
    own = [p for p in space.params if p.key.startswith("loss.")] if method.startswith("itra") else []
    if METHOD_KNOBS[method] is not None:
        own = [METHOD_KNOBS[method]]
    base = config_mod.apply_overrides(space.base, [f"loss.name={method}"])
    return replace(space, name=f"{space.name}-{method}", base=base, params=tuple(shared + own))


SETTINGS_FILE = "search_settings.json"


def save_settings(space: spaces.Space, objective: str, path: Path, parent_run_id: str) -> Path:
    """Record the prepared search beside Tune's state, so --resume continues exactly this search."""
    raw = asdict(space)
    raw["path"] = str(space.path)
    path.mkdir(parents=True, exist_ok=True)
    out = path / SETTINGS_FILE
    out.write_text(json.dumps({"space": raw, "objective": objective, "mlflow_parent_run_id": parent_run_id},
                              indent=2))
    return out


def load_settings(path: Path) -> tuple[spaces.Space, str, str]:
    """The search as it was started: its space, budget and base configuration, and its objective."""
    try:
        raw = json.loads((path / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"--resume: {path / SETTINGS_FILE} is missing or unreadable; "
                          f"this folder was not made by itra_tune.search") from None
    sp = raw["space"]
    sp["path"] = Path(sp["path"])
    sp["params"] = tuple(spaces.Param(**{**p, "choices": tuple(p["choices"])}) for p in sp["params"])
    return spaces.Space(**sp), raw["objective"], raw["mlflow_parent_run_id"]


class TrackingCallback(tune.Callback):
    """Live MLflow logging from the driver: a child run per trial, metrics per epoch.

    Holds plain data only, so it pickles into Tune's experiment state; the client is made on first use.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str) -> None:
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self._tracker: tracking.Tracker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> tracking.Tracker | None:
        if self._tracker is None:
            try:
                self._tracker = tracking.Tracker(self.uri, self.experiment, self.parent_run_id)
            except Exception:  # noqa: BLE001 - the server is away: the end of the search back-fills
                return None
        return self._tracker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.tracker is not None:
            self.tracker.trial_started(trial.trial_id, _trial_name(trial), trial_params(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.tracker is not None:
            self.tracker.epoch(trial.trial_id, result)


# --- Tune and Optuna -------------------------------------------------------------------------------


class DefineByRun:
    """An Optuna define-by-run space over dotted configuration keys (a class: Tune pickles the searcher)."""

    def __init__(self, params: Sequence[spaces.Param]) -> None:
        self.params = tuple(params)

    def __call__(self, trial: Any) -> None:
        for p in self.params:
            if p.kind == "categorical":
                trial.suggest_categorical(p.key, list(p.choices))
            elif p.kind == "int":
                trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)


def objectives(space: spaces.Space, objective: str) -> tuple[Any, Any]:
    if objective == "acc_ce":
        return ["val_acc", "val_ce"], ["max", "min"]
    return space.metric, space.mode


def build_searcher(space: spaces.Space, objective: str, seed: int) -> Any:
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    metric, mode = objectives(space, objective)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(1, space.num_samples // 2)))
    searcher = OptunaSearch(space=DefineByRun(space.params), metric=metric, mode=mode, sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent)


def build_scheduler(space: spaces.Space, epochs: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    opts = {k: v for k, v in space.scheduler.items() if k != "name"}
    common = {"metric": space.metric, "mode": space.mode}
    name = space.scheduler["name"]
    if name == "asha":
        grace = min(int(opts.get("grace_period", 1)), epochs)
        return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=grace,
                             reduction_factor=opts.get("reduction_factor", 2), **common)
    if name == "hyperband":
        return HyperBandScheduler(time_attr="epoch", max_t=epochs, reduction_factor=opts.get("reduction_factor", 3),
                                  **common)
    if name == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=opts.get("grace_period", 1),
                                  min_samples_required=opts.get("min_samples_required", 2), **common)
    return FIFOScheduler()


def init_ray(address: str | None, space: spaces.Space) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic table honours our progress columns
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        _probe(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--address {address}: cannot join the Ray cluster ({first}); "
                              f"start one with `ray start --head` or drop --address") from None
    else:
        ray.init(**kwargs)


def fit_resources(space: spaces.Space, available: dict[str, float]) -> spaces.Space:
    """The space with per-trial resources the cluster can grant: a trial asking for more would wait forever.

    No GPU in the cluster runs trials on the CPU; more CPUs per trial than the cluster has become all of them.
    """
    gpus, cpus = space.gpus_per_trial, space.cpus_per_trial
    if gpus > 0 and available.get("GPU", 0) == 0:
        print(f"note: the Ray cluster has no GPU; trials run on the CPU (gpus_per_trial {gpus} -> 0)", file=sys.stderr)
        gpus = 0
    if cpus > available.get("CPU", cpus):
        print(f"note: the Ray cluster has {available['CPU']:g} CPUs; cpus_per_trial {cpus} -> {available['CPU']:g}",
              file=sys.stderr)
        cpus = available["CPU"]
    return replace(space, gpus_per_trial=gpus, cpus_per_trial=cpus)


def _probe(address: str) -> None:
    # ray.init retries an unreachable address for minutes; a plain TCP connect answers in seconds.
    import socket

    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: cannot join the Ray cluster ({e.strerror or e}); start one with "
                          f"`ray start --head` or drop --address") from None


def run_one(space: spaces.Space, cfg: config_mod.Config, args: Any, name: str, storage: Path,
            callback: TrackingCallback) -> Any:
    """Run (or resume) one experiment and return its ResultGrid."""

    trainable = tune.with_resources(train_trial, {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial})
    path = storage / name
    if args.resume:
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                  resume_errored=args.max_failures > 0).fit()
    run_config = tune.RunConfig(
        name=name,
        storage_path=str(storage),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                checkpoint_score_order=space.mode),
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        progress_reporter=_reporter(space),
        callbacks=[callback],
        verbose=1,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"base": space.base},
        tune_config=tune.TuneConfig(search_alg=build_searcher(space, args.objective, args.seed),
                                    scheduler=build_scheduler(space, cfg.train.epochs),
                                    num_samples=space.num_samples, reuse_actors=True,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=run_config,
    )
    return tuner.fit()


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _reporter(space: spaces.Space) -> Any:
    from ray.tune import CLIReporter

    params = {p.key: p.key.split(".")[-1] for p in space.params}
    return CLIReporter(parameter_columns=params, max_report_frequency=15,
                       metric_columns={"epoch": "epoch", "val_acc": "val_acc", "val_ce": "val_ce",
                                       "match_loss": "match"})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    space, cfg = prepare(args)
    storage = Path(args.storage_path or DEFAULT_STORAGE).expanduser().resolve()
    uri = tracking.resolve_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else [None]
    plan = [(method_space(space, m), m) if m else (space, None) for m in methods]
    if args.resume and not args.name:
        raise ConfigError("--resume needs --name, the experiment to continue (see the last search's summary)")
    stem = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    names = [f"{stem}-{m}" if m else stem for _, m in plan]
    saved: dict[str, tuple[str, str]] = {}  # name -> (objective, parent run id), for a resumed search
    for i, n in enumerate(names):
        exists = (storage / n).is_dir()
        if args.resume and not exists:
            raise ConfigError(f"--resume: no experiment {n!r} in {storage}; check --name and --storage-path")
        if not args.resume and exists:
            raise ConfigError(f"experiment {n!r} already exists in {storage}; add --resume or choose another --name")
        if args.resume:  # the search as started, whatever this command line says
            sp, objective, parent = load_settings(storage / n)
            plan[i], saved[n] = (sp, plan[i][1]), (objective, parent)
    init_ray(args.address, space)
    import ray

    available = ray.cluster_resources()
    plan = [(fit_resources(sp, available), m) for sp, m in plan]
    argv_resume = " ".join(["python -m itra_tune.search", "--space", str(args.space), "--name", stem, "--resume"]
                           + (["--methods", args.methods] if args.methods else [])
                           + (["--tracking-uri", args.tracking_uri] if args.tracking_uri else []))

    summaries = []
    for (sp, _method), name in zip(plan, names):
        sp_cfg = config_mod.from_dict(sp.base, str(sp.path))
        objective, parent = saved.get(name, (args.objective, ""))
        if not parent:
            tracker = tracking.Tracker(uri, sp.name, run_name=name, params=_search_params(sp, args, objective),
                                       artifacts=[sp.path])
            parent = tracker.parent
            tracker.c.log_artifact(parent, str(save_settings(sp, objective, storage / name, parent)))
        t0 = time.perf_counter()
        results = run_one(sp, sp_cfg, args, name, storage, TrackingCallback(uri, sp.name, parent))
        summary = results_mod.summarize(results, sp, sp_cfg, storage / name, time.perf_counter() - t0, objective)
        interrupted = summary["trials"] < sp.num_samples  # Ctrl-C: Tune saved its state and returned early
        summary["tracking"] = results_mod.record(results, summary, sp, sp_cfg, uri, parent, storage / name,
                                     args.register and not interrupted, interrupted)
        (storage / name / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        results_mod.print_summary(summary, sp, name, argv_resume)
        if interrupted:
            print(f"interrupted after {summary['trials']} of {sp.num_samples} trials; continue with: {argv_resume}",
                  file=sys.stderr)
            return 130
        summaries.append(summary)
    if len(summaries) > 1:
        results_mod.compare_compactness(summaries)
        results_mod.print_comparison(summaries)
    return cli.EXIT_OK if all(s.get("best") for s in summaries) else cli.EXIT_FAILED


def _search_params(space: spaces.Space, args: Any, objective: str) -> dict[str, Any]:
    return {"space": space.name, "metric": space.metric, "mode": space.mode, "objective": objective,
            "num_samples": space.num_samples, "max_concurrent": space.max_concurrent, "seed": args.seed,
            "scheduler": space.scheduler.get("name"), "searched": ",".join(p.key for p in space.params),
            "code_version": config_mod.code_version()}


if __name__ == "__main__":
    sys.exit(cli.run("python -m itra_tune.search", main))
