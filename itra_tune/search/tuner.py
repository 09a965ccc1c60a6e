"""Ray Tune and Optuna: the searcher, the schedulers, the cluster, the per-trial resources, live tracking, and
one experiment run (or resumed) through ``tune.Tuner``. The only module that builds Tune's objects."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import ConcurrencyLimiter

from itra_tune import checkpoint, spaces, tracking
from itra_tune.config import ConfigError
from itra_tune.search import snapshots
from itra_tune.search import study as study_mod
from itra_tune.search.trainable import (
    SELECTION,
    WORKERS_GROUP,
    epoch_of,
    reported,
    ship_by_value,
    train_trial,
    trial_params,
    user_trial,
)

# Ray's environment for a search driver (and the benchmarks): the classic progress table, which honours our
# columns, and no warning about experiment-state syncing on a local disk. Authentication stays as Ray ships it:
# a local cluster requires its token (Ray 2.60 binds its gRPC servers to every interface, with no setting for
# the loopback alone, so the token is what keeps other machines out).
RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # a result without the metric (a user trainable that returned without a report) must not end the driver: such
    # a trial has no history, and the ranking never selects it
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}
SETTINGS_FILE = "search_settings.json"


def set_ray_env() -> None:
    """Ray's environment defaults for a search, leaving any value the user set alone."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


# --- the cluster ------------------------------------------------------------------------------------


def init_ray(address: str | None, code: tuple[str, ...] = ()) -> bool:
    """Join the cluster at ``address``, or start a local one; ConfigError when the address does not answer.
    ``code``: folders the trial workers need on their path (those of a user's model or dataset factory).
    Returns whether it started a local cluster (not when Ray was initialized already, or joined)."""
    import ray

    set_ray_env()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if code:  # the workers import the factory by name, as the engine does in the driver
        path = os.pathsep.join(dict.fromkeys([*code, *filter(None, [os.environ.get("PYTHONPATH")])]))
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    if not address:
        private_token()
        ray.init(**kwargs)
        return True
    _probe(address)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--address {address}: cannot join the Ray cluster ({first}); "
                          f"start one with `ray start --head` or drop --address") from None
    return False


def private_token() -> Path:
    """The token file of a local cluster, readable by its owner alone: made 0600 before Ray would make it 0644,
    or made 0600 when Ray made it already."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.exists():
        path.chmod(0o600)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _probe(address: str) -> None:
    # ray.init retries an unreachable address for minutes; a plain TCP connect answers in seconds.
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: cannot join the Ray cluster ({e.strerror or e}); start one with "
                          f"`ray start --head` or drop --address") from None


def fit_resources(space: spaces.Space, available: dict[str, float]) -> spaces.Space:
    """The space with per-trial resources the cluster can grant: a trial asking for more would wait forever.

    No GPU in the cluster runs trials on the CPU; more CPUs per trial than the cluster has become all of them.
    """
    gpus, cpus, workers = space.gpus_per_trial, space.cpus_per_trial, space.workers_per_trial
    if gpus > 0 and available.get("GPU", 0) == 0:
        print(f"note: the Ray cluster has no GPU; trials run on the CPU (gpus_per_trial {gpus} -> 0)", file=sys.stderr)
        gpus = 0
    if cpus * workers > available.get("CPU", cpus * workers):
        fit = available["CPU"] / workers
        print(f"note: the Ray cluster has {available['CPU']:g} CPUs; cpus_per_trial {cpus} -> {fit:g}"
              + (f" per worker ({workers} workers)" if workers > 1 else ""), file=sys.stderr)
        cpus = fit
    return replace(space, gpus_per_trial=gpus, cpus_per_trial=cpus)


# --- Optuna and the schedulers ------------------------------------------------------------------------


class DefineByRun:
    """An Optuna define-by-run space over dotted configuration keys (a class: Tune pickles the searcher)."""

    def __init__(self, params: Sequence[spaces.Param]) -> None:
        self.params = tuple(params)

    def __call__(self, trial: Any) -> None:
        for p in self.params:
            p.suggest(trial)


def objectives(space: spaces.Space, objective: str) -> tuple[Any, Any]:
    """The metric(s) and mode(s) Optuna optimizes: the space's, or accuracy and CE together (``acc_ce``)."""
    if objective == "acc_ce":
        return ["val_acc", "val_ce"], ["max", "min"]
    return space.metric, space.mode


def build_searcher(space: spaces.Space, objective: str, seed: int, previous: Any = None,
                   shared: tuple[str, str] | None = None) -> Any:
    """Optuna's TPE (seeded) over the space's parameters, at most ``max_concurrent`` trials in flight;
    ``previous``: an earlier search's stored study, whose trials seed the sampler (``--warm-start``); ``shared``:
    the stored study (database URL, name) whose trials other drivers finish the sampler learns as it goes.

    Under population based training, which takes no searcher, Tune's random sampling of the same space
    (``param_space``) draws the first population.
    """
    import optuna
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if space.scheduler["name"] == "pbt":
        return BasicVariantGenerator(max_concurrent=space.max_concurrent, random_state=seed)
    metric, mode = objectives(space, objective)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(1, space.num_samples // 2)))
    searcher = OptunaSearch(space=DefineByRun(space.params), metric=metric, mode=mode, sampler=sampler)
    if previous is not None:
        study_mod.seed(searcher._ot_study, previous, space.params)  # its in-memory study, saved with Tune's state
    if shared is not None:
        return SharedStudy(searcher, space.max_concurrent, *shared, space.params)
    return ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent)


class SharedStudy(ConcurrencyLimiter):
    """At most ``max_concurrent`` trials in flight, and before each suggestion the OptunaSearch it wraps learns the
    trials other drivers finished in the stored study ``study`` at ``url`` (``study.learn``): drivers naming one
    study sample as one search. Plain data only (it pickles with the Tuner); what it learned lives in the sampler's
    study, which Tune saves with its experiment state, so a resumed driver does not learn a trial twice."""

    def __init__(self, searcher: Any, max_concurrent: int, url: str, study: str,
                 params: Sequence[spaces.Param]) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.url, self.study, self.params = url, study, tuple(params)

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.live_trials) < self.max_concurrent:  # a suggestion is made: learn first
            sampler = self.searcher._ot_study
            try:
                new = study_mod.learn(sampler, study_mod.stored(self.url, self.study), set(self.searcher._ot_trials),
                                      self.params)
            except Exception:  # noqa: BLE001 - the database is away: sample from what this driver knows
                study_mod.stored.cache_clear()
                new = []
            if new:
                print(f"note: the sampler learned {len(new)} trial(s) other drivers finished in the Optuna study "
                      f"{self.study!r} ({study_mod.learned(sampler)} in all)", file=sys.stderr, flush=True)
        return super().suggest(trial_id)


def tune_domain(p: spaces.Param) -> Any:
    """A searched parameter as a Tune search space (for population based training, which samples itself)."""
    if p.kind == "categorical":
        return tune.choice(list(p.choices))
    if p.kind == "int":
        return tune.lograndint(int(p.low), int(p.high) + 1) if p.log else tune.randint(int(p.low), int(p.high) + 1)
    return tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)


def mutations(space: spaces.Space) -> dict[str, Any]:
    """What population based training mutates: the searched keys of the loss and the optimizer (lambda, the
    learning rate, epsilon, ...). The data's keys (batch size, pairing) stay as the trial began."""
    return {p.key: (list(p.choices) if p.kind == "categorical" else tune_domain(p))
            for p in space.params if p.key.startswith(spaces.MUTABLE)}


class KeepInRange:
    """PBT's explore step multiplies values by 0.8 or 1.2; this keeps them inside the space's ranges."""

    def __init__(self, params: Sequence[spaces.Param]) -> None:
        self.params = [p for p in params if p.kind != "categorical"]

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for p in self.params:
            if p.key in config:
                value = min(max(config[p.key], p.low), p.high)
                config[p.key] = int(round(value)) if p.kind == "int" else value
        return config


def build_scheduler(space: spaces.Space, epochs: int) -> Any:
    """The space's early-stopping scheduler, counting time in epochs.

    ``pbt``: population based training. Every ``perturbation_interval`` epochs (default 1) a trial in the bottom
    ``quantile_fraction`` (default 0.25) continues from the checkpoint of one in the top, with its loss and
    optimizer values mutated (``mutations``); the engine trains on with the mutated values
    (``engine.load_optimization``).
    """
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    opts = {k: v for k, v in space.scheduler.items() if k != "name"}
    # a user trainable's time is its count of reports (Tune's own counter: it has one whatever the reports hold)
    common = {"metric": space.metric, "mode": space.mode,
              "time_attr": "training_iteration" if space.trainable else "epoch"}
    name = space.scheduler["name"]
    if name == "asha":
        grace = min(spaces.grace_epochs(space.scheduler, epochs), epochs)
        return ASHAScheduler(max_t=epochs, grace_period=grace,
                             reduction_factor=opts.get("reduction_factor", 2), **common)
    if name == "hyperband":
        return HyperBandScheduler(max_t=epochs, reduction_factor=opts.get("reduction_factor", 3),
                                  **common)
    if name == "pbt":
        mutable = mutations(space)
        if not mutable:
            raise ConfigError(f"{space.path}: scheduler pbt mutates searched keys of loss or optim, and the space "
                              f"searches none; search loss.lam or optim.lr, or choose another scheduler")
        return PopulationBasedTraining(perturbation_interval=opts.get("perturbation_interval", 1),
                                       quantile_fraction=opts.get("quantile_fraction", 0.25),
                                       hyperparam_mutations=mutable, custom_explore_fn=KeepInRange(space.params),
                                       synch=bool(opts.get("synch", False)), log_config=True, **common)
    if name == "median":
        return MedianStoppingRule(grace_period=opts.get("grace_period", 1),
                                  min_samples_required=opts.get("min_samples_required", 2), **common)
    return FIFOScheduler()


# --- the settings a search was started with ----------------------------------------------------------


def save_settings(space: spaces.Space, objective: str, path: Path, parent_run_id: str) -> Path:
    """Record the prepared search beside Tune's state, so --resume continues exactly this search."""
    raw = asdict(space)
    raw["path"] = str(space.path)
    return checkpoint.write_text(path / SETTINGS_FILE, json.dumps(
        {"space": raw, "objective": objective, "mlflow_parent_run_id": parent_run_id}, indent=2))


def load_settings(path: Path) -> tuple[spaces.Space, str, str]:
    """The search as it was started: its space (budget and base configuration), objective and parent run."""
    try:
        raw = json.loads((path / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"--resume: {path / SETTINGS_FILE} is missing or unreadable; "
                          f"this folder was not made by itra_tune.search") from None
    sp = raw["space"]
    sp["path"] = Path(sp["path"])
    sp["params"] = tuple(spaces.Param(**{**p, "choices": tuple(p["choices"])}) for p in sp["params"])
    return spaces.Space(**sp), raw["objective"], raw["mlflow_parent_run_id"]


# --- live tracking ----------------------------------------------------------------------------------


class TrackingCallback(tune.Callback):
    """Live MLflow logging from the driver: a child run per trial, metrics per epoch.

    Holds plain data only, so it pickles into Tune's experiment state; the client is made on first use.
    ``user``: the trials run a user's trainable, whose every reported number is logged. ``confirms``: the
    confirmation's trials, seed (as text) -> the exploring trial each confirms (tagged ``CONFIRMS_TAG``).
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str, user: bool = False,
                 confirms: dict[str, str] | None = None) -> None:
        self.uri, self.experiment, self.parent_run_id, self.user = uri, experiment, parent_run_id, user
        self.confirms = confirms or {}
        self._tracker: tracking.Tracker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> tracking.Tracker | None:
        if self._tracker is None:
            if tracking.problem(self.uri, tracking.LIVE_PROBE_S) is not None:
                return None  # away: MLflow's own retries would hold up the trials for minutes
            try:
                self._tracker = tracking.Tracker(self.uri, self.experiment, self.parent_run_id,
                                                 epoch_metrics=None if self.user else tracking.EPOCH_METRICS)
            except Exception:  # noqa: BLE001 - the server is away: the end of the search back-fills
                return None
        return self._tracker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # a trial restored from a snapshot taken before its configuration was set has none (yet): it is recorded
        # with its first result, or at the end of the search
        if self.tracker is not None and "base" in trial.config:
            self.tracker.trial_started(trial.trial_id, trial_name(trial), trial_params(trial.config, self.user),
                                       confirmation_tags(trial.config, self.confirms))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.tracker is not None and not self.tracker.knows(trial.trial_id) and "base" in trial.config:
            self.on_trial_start(iteration, trials, trial)
        if self.tracker is not None:
            self.tracker.epoch(trial.trial_id, {**reported(result), "epoch": epoch_of(result)} if self.user else result)


def confirmation_tags(config: dict[str, Any], confirms: dict[str, str]) -> dict[str, str]:
    """The tags of a confirmation's trial run: the exploring trial it re-trains (none for an exploring trial)."""
    candidate = confirms.get(str(config.get("seed")))
    return {tracking.CONFIRMS_TAG: candidate} if candidate else {}


class StudyRecord(tune.Callback):
    """Copy each finished trial into the stored Optuna study as it ends (``search.study.record``), so that
    ``optuna-dashboard`` shows the search live. Plain data only: it pickles into Tune's experiment state."""

    def __init__(self, space: spaces.Space, objective: str, url: str, name: str) -> None:
        self.params, self.url, self.name = space.params, url, name
        self.metrics = objectives(space, objective)[0]
        self._study: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}

    def record(self, config: dict[str, Any], result: dict[str, Any] | None, key: str, failed: bool) -> None:
        if self._study is None:
            import optuna

            self._study = optuna.load_study(study_name=self.name, storage=study_mod.storage(self.url))
        names = [self.metrics] if isinstance(self.metrics, str) else list(self.metrics)
        values = None if failed or not result or any(m not in result for m in names) else \
            [float(result[m]) for m in names]
        study_mod.record(self._study, key, {p.key: config[p.key] for p in self.params},
                         {p.key: p.distribution() for p in self.params}, values)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._safely(trial, failed=True)

    def _safely(self, trial: Any, failed: bool) -> None:
        try:
            self.record(trial.config, trial.last_result, trial.trial_id, failed)
        except Exception:  # noqa: BLE001 - the database is away: the end of the search records every trial
            self._study = None

    def record_all(self, grid: Any, wait: float = 60.0) -> str | None:
        """Every trial of a finished (or interrupted) search, for those whose end the live callback missed. A
        database that is away (restarting) is waited for, ``wait`` seconds at most; returns None, or why the study
        could not be recorded (``--resume`` records it later: a trial is recorded once, whenever)."""
        deadline, told = time.monotonic() + wait, False
        while True:
            try:
                for r in grid:
                    if r.config and r.metrics:
                        self.record(r.config, r.metrics, r.metrics.get("trial_id", Path(r.path).name),
                                    r.error is not None)
                return None
            except Exception as e:  # noqa: BLE001 - the database is away, or its pooled connection went stale
                self._study = None  # a new connection next time
                why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                if time.monotonic() >= deadline:
                    return why
                if not told:
                    print(f"waiting up to {wait:.0f}s for the Optuna database ({why})", file=sys.stderr, flush=True)
                    told = True
                time.sleep(2.0)


class FreeWorkers(tune.Callback):
    """Free a data-parallel trial's workers when the trial ends, however it ends (``trainable.WORKERS_GROUP``)."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._free(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._free(trial)

    @staticmethod
    def _free(trial: Any) -> None:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        group = (trial.last_result or {}).get(WORKERS_GROUP)
        if group:
            try:
                remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group))))
            except Exception:  # noqa: BLE001 - already removed by Ray Train itself
                pass


class KeepSnapshots(tune.Callback):
    """Keeps, once a second, a whole copy of each of the experiment's snapshots (``snapshots.Keeper``): what a
    resume puts back when the driver was killed while Ray wrote one. The experiment folder is the trials' own, so a
    restored search keeps the folder it was restored from."""

    def __init__(self, every: float = 1.0) -> None:
        self.every, self._last, self._keeper = every, 0.0, snapshots.Keeper()

    def __getstate__(self) -> dict[str, Any]:
        return {"every": self.every}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every or not trials:
            return
        self._last = now
        experiment = Path(trials[0].storage.experiment_fs_path)
        if experiment.is_dir():  # a local (or mounted) storage path; a bucket keeps its own versions
            self._keeper.keep(experiment)

    def on_experiment_end(self, trials: list, **info: Any) -> None:  # after Tune's last snapshot
        self._last = 0.0
        self.on_step_end(0, trials)


# --- one experiment -------------------------------------------------------------------------------------


def repair_checkpoints(experiment: Path) -> list[str]:
    """Make Tune's last snapshot of ``experiment`` name only checkpoints that exist, before it is restored.

    Tune keeps a trial's 4 best checkpoints and its newest; between two snapshots a newer checkpoint can take the
    newest's place and the one the snapshot names as newest can be pruned. A driver killed then leaves a snapshot
    that Tune cannot restore ("does not exist on storage anymore"). Each such trial is pointed at its newest
    checkpoint that exists (or none: it starts over), so it loses at most the epochs since then. Checkpoints the
    snapshot lists but the killed run had pruned already are dropped from its list too.

    Returns:
        The trials repaired, with the checkpoint each now resumes from.
    """
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.utils.serialization import TuneFunctionEncoder, _loads_with_cloudpickle

    newest = _find_newest_experiment_checkpoint(str(experiment))
    if newest is None:
        return []
    state = json.loads(Path(newest).read_text())
    repaired, changed = [], False
    for entry in state.get("trial_data", []):
        meta = _loads_with_cloudpickle(entry[1])
        manager = meta.get("checkpoint_manager")
        if manager is None:
            continue
        alive = [r for r in manager._checkpoint_results if Path(r.checkpoint.path).exists()]
        latest = manager._latest_checkpoint_result
        lost = latest is not None and not Path(latest.checkpoint.path).exists()
        if len(alive) == len(manager._checkpoint_results) and not lost:
            continue
        # pruned entries go too: Tune would try to delete them again and log an error for each
        manager._checkpoint_results, changed = alive, True
        if lost:
            manager._latest_checkpoint_result = max(alive, key=lambda r: r.metrics.get("training_iteration", 0),
                                                    default=None)
            found = manager._latest_checkpoint_result
            repaired.append(f"{Path(latest.checkpoint.path).parent.name}: "
                            f"{Path(found.checkpoint.path).name if found else 'from the start'}")
        entry[1] = json.dumps(meta, indent=2, cls=TuneFunctionEncoder)
    if changed:
        tmp = Path(newest).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, newest)
    if repaired:
        print(f"note: resuming {', '.join(repaired)} (their newest checkpoint had been pruned)", file=sys.stderr)
    return repaired


def run_experiment(space: spaces.Space, epochs: int, name: str, storage: Path, callback: TrackingCallback, *,
                   objective: str, seed: int, max_failures: int, resume: bool,
                   user_fn: Callable[..., Any] | None = None, study: StudyRecord | None = None,
                   previous: Any = None, progress: tune.Callback | None = None,
                   points: list[dict[str, Any]] | None = None) -> Any:
    """Run (or resume) one experiment and return its ResultGrid; ``user_fn``: a user trainable, else the engine;
    ``study``: what copies finished trials into the stored Optuna study; ``previous``: the study to warm-start
    from; ``progress``: the live view (``search.progress.Progress``), else Ray's status table; ``points``: train
    these configurations (dotted values) in order instead of sampling (the confirmation)."""
    resources = {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial}
    if user_fn is not None:
        ship_by_value(user_fn)
        fn = tune.with_parameters(user_trial, fn=user_fn, metric=space.metric, mode=space.mode)
    elif space.workers_per_trial > 1:  # the trial only drives its workers, which hold the resources
        fn = tune.with_parameters(train_trial, metric=space.metric, mode=space.mode, storage=str(storage / name),
                                  worker_resources={"CPU": space.cpus_per_trial, "GPU": space.gpus_per_trial})
        resources = {"cpu": 0, "gpu": 0, "memory": 1}  # Tune refuses an empty request: one byte, no CPU
    else:
        fn = tune.with_parameters(train_trial, metric=space.metric, mode=space.mode)
    trainable = tune.with_resources(fn, resources)
    if resume:
        snapshots.mend(storage / name)
    # a killed driver may leave no snapshot at all (stopped before its first one): the experiment starts over
    if resume and tune.Tuner.can_restore(str(storage / name)):
        repair_checkpoints(storage / name)
        return tune.Tuner.restore(str(storage / name), trainable=trainable, resume_unfinished=True,
                                  resume_errored=max_failures > 0).fit()
    run_config = tune.RunConfig(
        name=name,
        storage_path=str(storage),
        # budget.max_epochs ends a user trainable's trial under every scheduler, none included
        stop={"training_iteration": epochs} if user_fn is not None else None,
        # the 4 best epochs' checkpoints: the selected one for the record, and room enough that the newest one,
        # which a resume after a killed driver restarts from, is rarely pruned before Tune's next snapshot
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4, checkpoint_score_attribute=SELECTION,
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=max_failures),
        progress_reporter=_reporter(space) if progress is None else None,
        callbacks=[callback, KeepSnapshots()] + ([FreeWorkers()] if space.workers_per_trial > 1 else [])
        + ([study] if study else []) + ([progress] if progress else []),
        verbose=1 if progress is None else 0,
    )
    pbt = space.scheduler["name"] == "pbt"
    sampled = {p.key: tune_domain(p) for p in space.params} if pbt else dict(points[0]) if points else {}
    tuner = tune.Tuner(
        trainable,
        param_space={"base": space.base, **sampled},
        tune_config=tune.TuneConfig(search_alg=fixed(points, space.max_concurrent) if points else
                                    build_searcher(space, objective, seed, previous,
                                                   (study.url, study.name) if study else None),
                                    scheduler=build_scheduler(space, epochs),
                                    num_samples=space.num_samples,
                                    # Ray 2.60: under PBT a reused actor ended exploited trials an epoch or two
                                    # early (measured: 2 of 4 trials); a fresh actor per restart does not
                                    # (and a trial driving Train workers has nothing to reuse)
                                    reuse_actors=not pbt and space.workers_per_trial == 1,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=run_config,
    )
    return tuner.fit()


def fixed(points: list[dict[str, Any]], max_concurrent: int) -> Any:
    """A searcher that hands out ``points`` in order, at most ``max_concurrent`` in flight (each point's keys are
    in the param space, whose values they replace)."""
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=[dict(p) for p in points], max_concurrent=max_concurrent)


def trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _reporter(space: spaces.Space) -> Any:
    from ray.tune import CLIReporter

    params = {p.key: p.key.split(".")[-1] for p in space.params}
    metrics = {"epoch": "epoch", space.metric: space.metric} if space.trainable else \
        {"epoch": "epoch", "val_acc": "val_acc", "val_ce": "val_ce", "match_loss": "match"}
    return CLIReporter(parameter_columns=params, max_report_frequency=15, metric_columns=metrics)
