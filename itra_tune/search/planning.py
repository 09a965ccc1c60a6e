"""Planning a search: from a space and the options to the experiments to run, every check done before Ray starts.

``Options`` are the command line's flags as fields; ``prepare`` applies them to a space (budget, resources,
scheduler, ``--smoke``, ``--set``) and validates the base configuration, its data and its model (or that a user's
trainable imports); ``method_space`` makes the space of each method of a fair comparison; ``equal_compute``
shares one budget among methods by their measured step cost; ``check_warm_start`` finds the earlier studies a
search starts from; ``code_folders`` imports the user's factories a trial may draw. Bad input raises a
``ConfigError`` here, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from itra_tune import cli, engine, spaces
from itra_tune import config as config_mod
from itra_tune.config import ConfigError

METHOD_KNOBS = {  # each method tunes its own knob in a fair comparison
    "ce": None,
    "lsr": spaces.Param("loss.eps", "float", 0.01, 0.3),
    "center": spaces.Param("loss.lam", "float", 0.005, 0.5, log=True),
    "itra": None,  # keeps the space's own loss.lam range
    "itra_c": None,
}
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
    # the stored study's name (default the experiment's); drivers naming one study in one database share it
    optuna_study: str | None = None
    warm_start: str | None = None  # an earlier search's name: its trials seed the sampler, its best runs first
    overrides: tuple[str, ...] = ()  # key=value overrides of the base configuration
    smoke: bool = False  # the space's smoke settings: a handful of short trials
    # retries of a failing trial from its latest checkpoint; None: 2 on a cluster joined with address (a lost node's
    # trials continue on another), 0 on a local one (where a failure would only fail again)
    max_failures: int | None = None

    @property
    def retries(self) -> int:
        return self.max_failures if self.max_failures is not None else (2 if self.address else 0)
    tracking_uri: str | None = None  # MLflow; default $MLFLOW_TRACKING_URI, else ./mlflow.db
    register: bool = False  # register the best model as itra-<space>
    log_models: int | None = 3  # the best k trials' checkpoints become LoggedModels; None: every trial's
    verbose: bool = False  # Ray's status table and Ray's, Optuna's and MLflow's own messages; else a compact view
    # a user's training function fn(config, report) (itra_tune.search.trainable.Report), or its
    # "package.module:function"; None: the space's own trainable, else the engine
    trainable: Any = None


def prepare(space: str | Path, opts: Options) -> tuple[spaces.Space, config_mod.Config | None]:
    """The space with the options applied, and its validated base configuration (None for a user trainable);
    checks data and model, or that the trainable imports."""
    sp = spaces.load(space, user=opts.trainable is not None)
    if opts.trainable is not None or sp.trainable is not None:
        return prepare_user(sp, opts), None
    sp, overrides = apply_options(sp, opts)
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
    engine.check(cfg, here=False)  # the trials open their device where they run (a GPU node, not the driver's)
    engine.check_available(cfg)
    check_methods(sp, opts.methods)
    return sp, cfg


def prepare_user(sp: spaces.Space, opts: Options) -> spaces.Space:
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
    sp, overrides = apply_options(sp, opts)
    return replace(sp, base=config_mod.apply_overrides(sp.base, overrides),
                   trainable=opts.trainable if isinstance(opts.trainable, str) else trainable.trainable_ref(fn))


def apply_options(sp: spaces.Space, opts: Options) -> tuple[spaces.Space, list[str]]:
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


def check_methods(space: spaces.Space, methods: tuple[str, ...] | list[str]) -> None:
    """Each method's space builds, and no two methods run the same search: ``itra_c`` on a space whose S2 pairing
    is ``memory`` beside ``itra_c:memory`` would make two identical rows labelled as a comparison of pairings."""
    seen: dict[tuple[str, str | None], str] = {}
    for m in methods:
        ms = method_space(space, m)
        loss, _ = parse_method(m)
        pairing = None
        if loss.startswith("itra"):
            searched = any(p.key == "data.pairing" for p in ms.params)
            pairing = "searched" if searched else ms.base_config().data.pairing
        if (loss, pairing) in seen:
            raise ConfigError(f"--methods: {seen[loss, pairing]!r} and {m!r} are the same search on {space.name}"
                              + (f" (its S2 pairing is {pairing})" if pairing else "")
                              + f"; name each pairing compared, e.g. {loss}:independent,{loss}:memory"
                              * bool(pairing))
        seen[loss, pairing] = m


def resume_command(space: str | Path, stem: str, opts: Options) -> str:
    """The command line that continues this search."""
    return " ".join([cli.command(), "-m itra_tune.search", "--space", str(space), "--name", stem, "--resume"]
                    + (["--methods", ",".join(opts.methods)] if opts.methods else [])
                    + (["--storage-path", opts.storage_path] if opts.storage_path else [])
                    + (["--optuna-storage", opts.optuna_storage] if opts.optuna_storage else [])
                    + (["--optuna-study", opts.optuna_study] if opts.optuna_study else [])
                    + (["--tracking-uri", opts.tracking_uri] if opts.tracking_uri else []))


def search_params(space: spaces.Space, opts: Options, objective: str) -> dict[str, Any]:
    return {"space": space.name, "metric": space.metric, "mode": space.mode, "objective": objective,
            "num_samples": space.num_samples, "max_concurrent": space.max_concurrent, "seed": opts.seed,
            "workers_per_trial": space.workers_per_trial,
            "scheduler": space.scheduler.get("name"), "searched": ",".join(p.key for p in space.params),
            "trainable": space.trainable or config_mod.ENGINE, "smoke": opts.smoke,
            "code_version": config_mod.code_version()}


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


def study_name(opts: Options, experiment: str, method: str | None) -> str:
    """The stored Optuna study of ``experiment``: ``--optuna-study`` (one per method, as the experiments are), else
    the experiment's own name."""
    if opts.optuna_study is None:
        return experiment
    return f"{opts.optuna_study}-{method_slug(method)}" if method else opts.optuna_study


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
