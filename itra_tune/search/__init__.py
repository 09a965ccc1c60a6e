"""Search a space with Ray Tune: ``itra_tune.search.run("cifar100", ...)``, or ``python -m itra_tune.search``.

Optuna (TPE, seeded) samples the space's parameters, a scheduler (ASHA by default) stops weak trials early,
and a concurrency limit bounds the trials in flight. Each trial is ``engine.fit`` behind
``trainable.train_trial``, or a user's own training function (``trainable=``) behind ``trainable.user_trial``.
Each search ends with a summary: the best configuration, its validation and test metrics, how many trials
completed, stopped early or failed, the wall time, and where the results are.

This package is the only part of itra_tune that imports Ray.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from itra_tune import cli, engine, extras, spaces, tracking
from itra_tune import config as config_mod
from itra_tune.config import ConfigError

METHOD_KNOBS = {  # each method tunes its own knob in a fair comparison
    "ce": None,
    "lsr": spaces.Param("loss.eps", "float", 0.01, 0.3),
    "center": spaces.Param("loss.lam", "float", 0.005, 0.5, log=True),
    "itra": None,  # keeps the space's own loss.lam range
    "itra_c": None,
}
DEFAULT_STORAGE = Path("runs") / "search"
# Ray 2.60 binds a local cluster's servers to the loopback address only when this is set before ray is first
# imported (it is read once, at import); a node joining another cluster refuses it, so never with an address.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# MLflow configures its loggers when first imported: a search shows its warnings only, unless --verbose
QUIET_MLFLOW = {"MLFLOW_LOGGING_LEVEL": "WARNING"}
OBJECTIVES = ("single", "acc_ce")


@dataclass(frozen=True)
class Options:
    """How to run a search; every field has the command line's flag of the same name (``--num-samples`` ...).

    Budget and resources left None take the space's own.
    """

    num_samples: int | None = None  # trials in all, the confirmation's included
    max_concurrent: int | None = None  # trials in flight at once
    confirm_share: float | None = None  # the share of num_samples re-training the best candidates on fresh seeds
    confirm_candidates: int | None = None  # how many candidates the confirmation re-trains
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None  # fractions let several small trials share a GPU
    workers_per_trial: int | None = None  # data-parallel workers per trial; cpus and gpus are then each worker's
    scheduler: str | None = None  # asha | median | hyperband | pbt | none
    objective: str = "single"  # single: the space's metric; acc_ce: val_acc (max) and val_ce (min), Pareto
    methods: tuple[str, ...] = ()  # one search per method with the same budget, e.g. ("ce", "itra_c")
    equal_compute: bool = False  # methods share compute, not trials: fewer trials for a dearer step
    address: str | None = None  # join this Ray cluster; None starts a local one
    storage_path: str | None = None  # where experiments live (default runs/search)
    name: str | None = None  # the experiment (default <space>-<time>); with resume, the one to continue
    resume: bool = False  # continue the experiment ``name`` as it was started
    seed: int = 0  # the Optuna sampler's seed
    optuna_storage: str | None = None  # the Optuna study's database URL (default a SQLite file in the experiment)
    warm_start: str | None = None  # an earlier search's name: its trials seed the sampler, its best runs first
    overrides: tuple[str, ...] = ()  # key=value overrides of the base configuration
    smoke: bool = False  # the space's smoke settings: a handful of short trials
    max_failures: int = 0  # retries of a failing trial from its latest checkpoint
    tracking_uri: str | None = None  # MLflow; default $MLFLOW_TRACKING_URI, else ./mlflow.db
    register: bool = False  # register the best model as itra-<space>
    log_models: int | None = 3  # the best k trials' checkpoints become LoggedModels; None: every trial's
    verbose: bool = False  # Ray's status table and Ray's, Optuna's and MLflow's own messages; else a compact view
    # a user's training function fn(config, report) (itra_tune.search.trainable.Report), or its
    # "package.module:function"; None: the space's own trainable, else the engine
    trainable: Any = None


def run(space: str | Path = "demo", **options: Any) -> list[dict[str, Any]]:
    """Search ``space`` (a name from ``search_spaces/`` or a YAML path); one summary per searched method.

    Args:
        space: the space to search.
        options: the fields of ``Options``.

    Returns:
        A summary per experiment: ``best`` (the best trial's row: parameters, status, metrics of its selected
        epoch), ``best_config`` (as plain data), counts of trials by status, ``experiment_path``, ``tracking``
        (the MLflow record) and ``interrupted`` (Ctrl-C: the rest is not run; resume with ``resume_command``).

    Raises:
        ConfigError: bad input, before Ray starts or anything is written (MissingExtra, a ConfigError, without
            ``itra_tune[search]``).
    """
    return _run(space, options)


def _run(space: str | Path, options: dict[str, Any], ending: bool = False) -> list[dict[str, Any]]:
    """``run``; ``ending``: the process ends with the search (the command line), so a local Ray is shut down
    while the record is written rather than at exit."""
    unknown = sorted(set(options) - {f.name for f in fields(Options)})
    if unknown:
        raise TypeError(f"search.run() got an unexpected option {unknown[0]!r}")
    extras.check(*extras.SEARCH, what="the search")  # without importing Ray: LOOPBACK_ONLY comes first
    opts = Options(**options)
    if not opts.address:
        for key, value in LOOPBACK_ONLY.items():
            os.environ.setdefault(key, value)
    if opts.log_models is not None and opts.log_models < 1:
        raise ConfigError(f"--log-models must be at least 1 (or all) but got {opts.log_models}")
    if opts.objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)} but got {opts.objective!r}")
    if not opts.verbose:
        for key, value in QUIET_MLFLOW.items():
            os.environ.setdefault(key, value)
    prepared, cfg = prepare(space, opts)
    if opts.objective == "acc_ce" and prepared.scheduler["name"] == "pbt":
        raise ConfigError("--objective acc_ce ranks on two metrics; population based training (pbt) needs one")
    storage = Path(opts.storage_path or DEFAULT_STORAGE).expanduser().resolve()
    uri = tracking.resolve_uri(opts.tracking_uri)
    tracking.check_reachable(uri)
    plan = [(method_space(prepared, m), m) for m in opts.methods] or [(prepared, None)]
    code_folders(plan)  # every factory a trial may draw imports, before anything is written
    if opts.equal_compute and not opts.resume:
        plan = equal_compute(plan)
    for sp, _ in plan:
        if sp.scheduler["name"] == "pbt" and not any(p.key.startswith(spaces.MUTABLE) for p in sp.params):
            raise ConfigError(f"{sp.name}: scheduler pbt mutates searched keys of loss or optim, and the space "
                              f"searches none; search loss.lam or optim.lr, or choose another scheduler")
    if opts.resume and not opts.name:
        raise ConfigError("--resume needs --name, the experiment to continue (see the last search's summary)")
    stem = opts.name or f"{prepared.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    names = [f"{stem}-{method_slug(m)}" if m else stem for _, m in plan]
    saved: dict[str, tuple[str, str]] = {}  # name -> (objective, parent run id), for a resumed search
    if opts.optuna_storage is not None:
        from itra_tune.search import study

        study.storage(opts.optuna_storage)  # answers, or one line before Ray starts
    warm = check_warm_start(plan, storage, opts)
    for i, n in enumerate(names):
        exists = (storage / n).is_dir()
        if opts.resume and not exists:
            raise ConfigError(f"--resume: no experiment {n!r} in {storage}; check --name and --storage-path")
        if not opts.resume and exists:
            raise ConfigError(f"experiment {n!r} already exists in {storage}; add --resume or choose another --name")
        if opts.resume:  # the search as started, whatever the options say now
            from itra_tune.search.tuner import load_settings

            sp, objective, parent = load_settings(storage / n)
            plan[i], saved[n] = (sp, plan[i][1]), (objective, parent)
    return _run_plan(plan, names, saved, storage, uri, opts, resume_command(space, stem, opts), warm, ending)


def equal_compute(plan: list[tuple[spaces.Space, str | None]]) -> list[tuple[spaces.Space, str | None]]:
    """The methods' spaces with trials in inverse proportion to their measured step cost: each gets the compute of
    the budget's trials of the cheapest method (a step of ITRA with an independent S2 costs about two of CE)."""
    if len(plan) < 2 or plan[0][1] is None:
        raise ConfigError("--equal-compute shares one budget among the searches of --methods; name two or more")
    if plan[0][0].trainable:
        raise ConfigError("--equal-compute measures the engine's training steps; a user trainable has its own")
    cost = [engine.step_seconds(config_mod.from_dict(sp.base, str(sp.path))) for sp, _ in plan]
    out = []
    for (sp, method), c in zip(plan, cost):
        trials = max(1, round(sp.num_samples * min(cost) / c))
        print(f"equal compute: {method} {1000 * c:.1f} ms a step ({c / min(cost):.2f}x), {trials} trials")
        out.append((replace(sp, num_samples=trials), method))
    return out


def check_warm_start(plan: list[tuple[spaces.Space, str | None]], storage: Path, opts: Options) -> list[Any]:
    """The earlier studies each experiment of ``plan`` starts from (None each without ``warm_start``); ConfigError,
    before anything is written, when one is missing or ranked by another objective."""
    if opts.warm_start is None:
        return [None] * len(plan)
    if opts.resume:
        raise ConfigError("--warm-start starts a new search from an earlier one; --resume continues a search as it "
                          "was started: give one of them")
    from itra_tune.search import study, tuner

    out = []
    for sp, method in plan:
        if sp.scheduler["name"] == "pbt":
            raise ConfigError("--warm-start seeds Optuna's sampler; population based training (pbt) samples without "
                              "it: choose another scheduler")
        name = f"{opts.warm_start}-{method_slug(method)}" if method else opts.warm_start
        url = study.storage_url(opts.optuna_storage, storage / name)
        if opts.optuna_storage is None and not (storage / name / study.DB_FILE).is_file():
            raise ConfigError(f"--warm-start: no search {name!r} with an Optuna study in {storage}; name an earlier "
                              f"search of this space (its --name), or give its --optuna-storage")
        out.append(study.load_previous(url, name, *tuner.objectives(sp, opts.objective)))
    return out


def _run_plan(plan: list[tuple[spaces.Space, str | None]], names: list[str], saved: dict[str, tuple[str, str]],
              storage: Path, uri: str, opts: Options, resume_cmd: str, warm: list[Any],
              ending: bool = False) -> list[dict[str, Any]]:
    # MLflow's import, a new store's creation and what the record imports (seconds) overlap Ray's import and
    # start; whatever needs one of them waits for it
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        background.submit(_warm, uri)
        import ray

        from itra_tune.search import progress, tuner

        with contextlib.nullcontext() if opts.verbose else progress.quiet_libraries():
            started = tuner.init_ray(opts.address, code_folders(plan))
            # a process that ends with the search shuts its local Ray down while the record is written
            after_tune = (lambda: background.submit(ray.shutdown)) if ending and started else None
            return _run_searches(plan, names, saved, storage, uri, opts, resume_cmd, warm, ray.cluster_resources(),
                                 after_tune)


def code_folders(plan: list[tuple[spaces.Space, str | None]]) -> tuple[str, ...]:
    """The folders of the user's model and dataset factories the plan's spaces name, imported (a ConfigError names
    one that does not import)."""
    refs: set[tuple[str, str]] = set()  # (key, package.module:callable)
    for sp, _ in plan:
        if sp.trainable is None:
            base = config_mod.dotted(sp.base)
            refs |= {(k, base.get(k)) for k in ("model.name", "data.name")}
            refs |= {(p.key, c) for p in sp.params if p.key in ("model.name", "data.name") for c in p.choices}
    refs = {(k, r) for k, r in refs if isinstance(r, str) and config_mod.is_callable_ref(r)}
    for key, ref in refs:  # a searched choice is checked here, not in every trial that draws it
        config_mod.import_callable(ref, key)
    return tuple(dict.fromkeys(config_mod.code_root(r) for _, r in sorted(refs)))


def _warm(uri: str) -> None:
    from itra_tune import plots

    with contextlib.suppress(Exception):  # the tracker's own call says what is wrong
        tracking.warm(uri)
    with contextlib.suppress(Exception):
        plots.warm()


def _run_searches(plan: list[tuple[spaces.Space, str | None]], names: list[str], saved: dict[str, tuple[str, str]],
                  storage: Path, uri: str, opts: Options, resume_cmd: str, warm: list[Any],
                  available: dict[str, float],
                  after_tune: Callable[[], concurrent.futures.Future] | None = None) -> list[dict[str, Any]]:
    """Each experiment of ``plan`` in turn; ``after_tune``: called when the last one's trials are done, returns
    a future this waits for before its Tune objects are dropped."""
    from itra_tune.search import confirming, progress, record, results, study, trainable, tuner

    summaries, shutting_down = [], None
    for i, ((sp, _method), name, previous) in enumerate(zip(plan, names, warm)):
        user_fn = trainable.resolve_trainable(opts.trainable or sp.trainable) if sp.trainable else None
        sp = tuner.fit_resources(sp, available)
        if user_fn is None:
            sp = record_threads(sp)
        sp_cfg = None if user_fn else config_mod.from_dict(sp.base, str(sp.path))
        epochs = sp.max_epochs if sp_cfg is None else sp_cfg.train.epochs
        objective, parent = saved.get(name, (opts.objective, ""))
        if not parent:
            tracker = tracking.Tracker(uri, sp.name, run_name=name, params=_search_params(sp, opts, objective),
                                       artifacts=[sp.path], tags={tracking.SMOKE_TAG: str(opts.smoke).lower()})
            parent = tracker.parent
            tracker.log_artifact(tuner.save_settings(sp, objective, storage / name, parent))
        stored = None
        if sp.scheduler["name"] != "pbt":  # population based training samples without Optuna
            url = study.storage_url(opts.optuna_storage, storage / name)
            study.create(url, name, *tuner.objectives(sp, objective), previous, sp.params)
            stored = tuner.StudyRecord(sp, objective, url, name)
        explore = confirming.exploring(sp, objective)  # the budget less the confirmation's trainings
        view = None if opts.verbose else progress.Progress(explore, epochs, total=sp.num_samples)
        if view is not None:
            print(progress.header(explore, epochs, name, opts.resume, objective,
                                  sp.num_samples - explore.num_samples), flush=True)
        t0 = time.perf_counter()
        grid = tuner.run_experiment(explore, epochs, name, storage,
                                    tuner.TrackingCallback(uri, sp.name, parent, user=user_fn is not None),
                                    objective=objective, seed=opts.seed, max_failures=opts.max_failures,
                                    resume=opts.resume, user_fn=user_fn, study=stored, previous=previous,
                                    progress=view)
        summary = results.summarize(grid, explore, epochs, storage / name, time.perf_counter() - t0, objective)
        # Ctrl-C: Tune saved its state and returned, with trials not started or not finished
        summary["interrupted"] = summary["trials"] < explore.num_samples or summary["interrupted_trials"] > 0
        confirmation = None
        if explore is not sp and not summary["interrupted"]:
            confirmation = _confirm(summary, grid, sp, epochs, storage / name, uri, parent, opts, t0)
        elif objective == "single" and summary["best"] is not None:  # the answer on its one seed, and why
            summary["answer"] = confirming.answer(sp, results.ranked(results.trial_rows(grid, sp, epochs), sp), None,
                                                  [])
            summary["answer"]["unconfirmed"] = confirming.why_not(sp, objective) if explore is sp else \
                "the exploration was interrupted; --resume finishes it, then confirms"
            confirming.save_answer(summary["answer"], storage / name)
        if after_tune is not None and i == len(plan) - 1:
            shutting_down = after_tune()
        if stored is not None:
            stored.record_all(grid)
            summary["optuna"] = {"storage": stored.url, "study": name, "dashboard": study.dashboard_command(stored.url)}
            if previous is not None:
                summary["optuna"]["warm_start"] = {"from": previous.study_name,
                                                   "trials": len(study.compatible(previous, sp.params))}
        summary["budget"] = "equal compute" if opts.equal_compute else "equal trials"
        summary["resume_command"] = resume_cmd
        summary["tracking"] = record.record(grid, summary, sp, sp_cfg, uri, parent, storage / name,
                                            opts.register and not summary["interrupted"], opts.log_models, epochs,
                                            confirmation)
        (storage / name / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        results.print_summary(summary, sp)
        summaries.append(summary)
        if summary["interrupted"]:
            break
    if len(summaries) > 1 and not summaries[-1]["interrupted"]:
        record.compare_compactness(summaries)
        results.print_comparison(summaries)
    if shutting_down is not None:  # Tune's objects die with this frame: never while Ray is half shut down
        shutting_down.result()
    return summaries


def _confirm(summary: dict[str, Any], grid: Any, space: spaces.Space, epochs: int, path: Path, uri: str,
             parent: str, opts: Options, t0: float) -> Any:
    """The confirmation stage after a finished exploration (``search.confirming``): its trials counted in the
    summary, the answer (``summary["answer"]``, answer.json) and the chosen candidate as the summary's best.
    Returns the confirmation's ResultGrid (None when it had nothing to confirm)."""
    from itra_tune.search import confirming, results

    explore = confirming.exploring(space, "single")
    ranking = results.ranked(results.trial_rows(grid, explore, epochs), space)
    p, conf_grid, rows = confirming.run(space, ranking, epochs, path, uri, parent, seed=opts.seed,
                                        max_failures=opts.max_failures, resume=opts.resume, verbose=opts.verbose,
                                        explored=summary["trials"], elapsed=time.perf_counter() - t0)
    for status in ("completed", "stopped early", "failed", "collapsed"):
        summary[status] += sum(r["status"].startswith(status) for r in rows)
    cut = sum(r["status"] == "interrupted" for r in rows)
    summary["interrupted_trials"] += cut
    summary["trials"] += len(rows)
    summary["num_samples"] = space.num_samples
    summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
    summary["interrupted"] = len(rows) < len(p["points"]) or cut > 0
    summary["confirmation"] = {"plan": p, "trainings": len(rows), "planned": len(p["points"])}
    summary["answer"] = confirming.answer(space, ranking, p, rows)
    if summary["answer"]:
        chosen = next(r for r in ranking if r["trial"] == summary["answer"]["chosen"])
        results.write_best(summary, chosen, space, path)
    confirming.save_answer(summary["answer"], path)
    return conf_grid


def prepare(space: str | Path, opts: Options) -> tuple[spaces.Space, config_mod.Config | None]:
    """The space with the options applied, and its validated base configuration (None for a user trainable);
    checks data and model, or that the trainable imports."""
    sp = spaces.load(space, user=opts.trainable is not None)
    if opts.trainable is not None or sp.trainable is not None:
        return _prepare_user(sp, opts), None
    sp, overrides = _apply_options(sp, opts)
    # the space file's base is valid (spaces.load checked it): what fails now, --set (or the space's smoke) caused
    source = "--set " + " ".join(opts.overrides) if opts.overrides else f"{sp.path}: smoke"
    cfg = config_mod.from_dict(config_mod.apply_overrides(sp.base, overrides), source)
    if (cfg.select.metric, cfg.select.mode, cfg.select.epoch) != (sp.metric, sp.mode, None):
        raise ConfigError(f"--set select.*: a search selects by its space's rule ({sp.metric}, {sp.mode}) and writes "
                          f"the selected epoch itself; change metric and mode in {sp.path}")
    for key in ("data.root", "data.path"):  # trials run in their own folders: make relative paths absolute
        if cfg.flat()[key] is not None:
            cfg = config_mod.override(cfg, {key: str(Path(cfg.flat()[key]).expanduser().resolve())})
    sp = replace(sp, base=cfg.to_dict())
    engine.check(cfg)
    engine.check_available(cfg)
    for m in opts.methods:
        method_space(sp, m)
    return sp, cfg


def _prepare_user(sp: spaces.Space, opts: Options) -> spaces.Space:
    """A space searching a user's trainable, with the options applied; the trainable imports (checked here)."""
    from itra_tune.search import trainable

    if isinstance(opts.trainable, str):
        spaces.check_trainable(opts.trainable, "--trainable")
    fn = trainable.resolve_trainable(opts.trainable or sp.trainable)
    if opts.methods:
        raise ConfigError("--methods compares the engine's losses; a user trainable searches its own space")
    if opts.register:
        raise ConfigError("--register needs the engine's model; a user trainable's best checkpoints are logged as "
                          "files of their runs (checkpoint/)")
    if (opts.workers_per_trial or sp.workers_per_trial) > 1:
        raise ConfigError("--workers-per-trial runs the engine's data-parallel workers; a user trainable runs as one "
                          "process (start your own process group inside it)")
    if sp.max_epochs is None:
        raise ConfigError(f"{sp.path}: budget.max_epochs is required with a trainable: the most times a trial "
                          f"reports (the schedulers count time in reports)")
    sp, overrides = _apply_options(sp, opts)
    return replace(sp, base=config_mod.apply_overrides(sp.base, overrides),
                   trainable=opts.trainable if isinstance(opts.trainable, str) else trainable.trainable_ref(fn))


def _apply_options(sp: spaces.Space, opts: Options) -> tuple[spaces.Space, list[str]]:
    """The space with the command line's budget, resources and scheduler (and --smoke's); the base overrides
    (--smoke's, then --set) for the caller to apply."""
    overrides = list(opts.overrides)
    budget: dict[str, Any] = {}
    if opts.smoke:
        smoke = dict(sp.smoke)
        budget["num_samples"] = int(smoke.pop("num_samples", 3))
        overrides = [f"{k}={v}" for k, v in smoke.items()] + overrides
    for key in ("num_samples", "max_concurrent", "confirm_share", "confirm_candidates", "cpus_per_trial",
                "gpus_per_trial", "workers_per_trial"):
        if getattr(opts, key) is not None:
            budget[key] = getattr(opts, key)
    spaces.check_budget(budget, "command line")
    if opts.scheduler is not None and opts.scheduler not in spaces.SCHEDULERS:
        raise ConfigError(f"scheduler must be one of {', '.join(spaces.SCHEDULERS)} but got {opts.scheduler!r}")
    scheduler = dict(sp.scheduler, name=opts.scheduler) if opts.scheduler else sp.scheduler
    return replace(sp, scheduler=scheduler, **budget), overrides


def record_threads(space: spaces.Space) -> spaces.Space:
    """The space with ``train.threads`` set to each trial's (or worker's) CPUs (Ray gives it that many threads),
    unless it says otherwise: the best configuration then retrains to the same numbers outside Ray; and with
    ``train.workers_per_trial``, the workers a trial runs as."""
    workers = [f"train.workers_per_trial={space.workers_per_trial}"] if space.workers_per_trial > 1 else []
    if space.base.get("train", {}).get("threads") is not None:
        return replace(space, base=config_mod.apply_overrides(space.base, workers))
    threads = max(1, int(space.cpus_per_trial))
    return replace(space, base=config_mod.apply_overrides(space.base, [f"train.threads={threads}"] + workers))


def parse_method(method: str) -> tuple[str, str | None]:
    """A method of a comparison, ``loss`` or ``loss:pairing`` (``itra_c:memory``): the loss and its S2 pairing."""
    loss, _, pairing = method.partition(":")
    if loss not in METHOD_KNOBS:
        raise ConfigError(f"--methods: unknown method {method!r}; choose from {', '.join(METHOD_KNOBS)}, an itra "
                          f"method optionally with its pairing, e.g. itra_c:memory")
    if pairing and (not loss.startswith("itra") or pairing not in config_mod.PAIRINGS):
        raise ConfigError(f"--methods: {method!r}: a pairing follows itra or itra_c and is one of "
                          f"{', '.join(config_mod.PAIRINGS)}")
    return loss, pairing or None


def method_slug(method: str) -> str:
    """The method as a name of folders, experiments and tags: ``itra_c:memory`` -> ``itra_c-memory``."""
    return method.replace(":", "-")


def method_space(space: spaces.Space, method: str) -> spaces.Space:
    """The space for one method of a fair comparison: same budget and shared knobs, its own loss knob (and, for
    ``loss:pairing``, its own pairing of S2, which is then not searched)."""
    loss, pairing = parse_method(method)
    shared = [p for p in space.params if not p.key.startswith("loss.")]
    if pairing:
        shared = [p for p in shared if p.key != "data.pairing"]
    own = [p for p in space.params if p.key.startswith("loss.")] if loss.startswith("itra") else []
    if METHOD_KNOBS[loss] is not None:
        own = [METHOD_KNOBS[loss]]
    base = config_mod.apply_overrides(space.base, [f"loss.name={loss}"] + ([f"data.pairing={pairing}"] * bool(pairing)))
    return replace(space, name=f"{space.name}-{method_slug(method)}", base=base, params=tuple(shared + own))


def resume_command(space: str | Path, stem: str, opts: Options) -> str:
    """The command line that continues this search."""
    return " ".join([cli.command(), "-m itra_tune.search", "--space", str(space), "--name", stem, "--resume"]
                    + (["--methods", ",".join(opts.methods)] if opts.methods else [])
                    + (["--storage-path", opts.storage_path] if opts.storage_path else [])
                    + (["--optuna-storage", opts.optuna_storage] if opts.optuna_storage else [])
                    + (["--tracking-uri", opts.tracking_uri] if opts.tracking_uri else []))


def _search_params(space: spaces.Space, opts: Options, objective: str) -> dict[str, Any]:
    return {"space": space.name, "metric": space.metric, "mode": space.mode, "objective": objective,
            "num_samples": space.num_samples, "max_concurrent": space.max_concurrent, "seed": opts.seed,
            "workers_per_trial": space.workers_per_trial,
            "scheduler": space.scheduler.get("name"), "searched": ",".join(p.key for p in space.params),
            "trainable": space.trainable or config_mod.ENGINE, "smoke": opts.smoke,
            "code_version": config_mod.code_version()}


__all__ = ["DEFAULT_STORAGE", "METHOD_KNOBS", "Options", "method_slug", "method_space", "parse_method", "prepare",
           "run"]
