"""Search spaces: ``search_spaces/<name>.yaml`` -> a validated search specification.

A space file holds the base training configuration (``base``), the parameters to search (``search``, dotted
keys of the configuration), the metric and mode the sampler and scheduler go by, the selection ``rule``
(``itra_tune.selection``: ``one_se`` by default, else ``metric``), the budget, the scheduler and the resources
per trial. ``--space`` takes a name from ``search_spaces/`` or a path to a YAML file.

A space that names a ``trainable`` (``package.module:function``) searches the user's own training function
instead of the engine: its ``base`` is that function's configuration (any mapping), its ``metric`` any name the
function reports (with ``mode``), and ``budget.max_epochs`` says how many reports a trial makes at most.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itra_tune import config as config_mod
from itra_tune.config import Config, ConfigError


def _shipped() -> Path:
    """The spaces shipped with the package: inside an installed wheel, or the checkout's top-level folder."""
    installed = Path(__file__).resolve().parent / "search_spaces"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "search_spaces"


SPACES_DIR = _shipped()
METRICS = config_mod.SELECT_METRICS  # what an engine search may select on: validation figures, never the test split
DEFAULT_METRIC = config_mod.SelectConfig.metric  # a space that names no metric selects as a configuration does
DEFAULT_RULE = config_mod.SelectConfig.rule
SCHEDULERS = ("asha", "median", "hyperband", "pbt", "none")
MUTABLE = ("loss.", "optim.")  # what population based training mutates mid-training: the loss's and the optimizer's

PARAM_KINDS = ("float", "int", "categorical")
TOP_KEYS = ("name", "description", "trainable", "base", "search", "metric", "mode", "rule", "budget", "scheduler",
            "resources", "smoke")


@dataclass(frozen=True)
class Param:
    """One searched parameter: a dotted configuration key and its distribution."""

    key: str
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The parameter as an Optuna distribution."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: Any) -> Any:
        """Sample the parameter in an Optuna define-by-run ``trial``."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class Space:
    name: str
    path: Path
    base: dict[str, Any]  # the base training configuration, as plain data
    params: tuple[Param, ...] = ()
    metric: str = "val_acc"  # what the sampler samples on and the scheduler stops by
    mode: str = "max"
    rule: str = "metric"  # how a trial's epoch and the search's answer are chosen (itra_tune.selection)
    num_samples: int = 8  # trainings in all, the confirmation's included
    max_concurrent: int = 2
    # the share of num_samples that re-trains the best candidates on fresh seeds after exploring (``confirming``),
    # and how many candidates share it
    confirm_share: float = 0.25
    confirm_candidates: int = 2
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "asha"})
    cpus_per_trial: float = 1.0  # with several workers per trial: each worker's
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1  # data-parallel workers of one trial (Ray Train)
    smoke: dict[str, Any] = field(default_factory=dict)  # overrides for --smoke
    trainable: str | None = None  # "package.module:function": a user's training function; None: the engine
    max_epochs: int | None = None  # a user trainable's reports per trial at most (the engine's: train.epochs)

    @property
    def select(self) -> config_mod.SelectConfig:
        """The space's selection rule, as a configuration's ``select`` section holds it."""
        return config_mod.SelectConfig(rule=self.rule, metric=self.metric, mode=self.mode)

    def base_config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        return config_mod.from_dict(config_mod.apply_overrides(self.base, overrides), str(self.path))


def search_dirs() -> list[Path]:
    extra = os.environ.get("ITRA_TUNE_SPACES")
    return ([Path(extra)] if extra else []) + [Path.cwd() / "search_spaces", SPACES_DIR]


def names() -> list[str]:
    """The names of the spaces shipped in (or added to) the search folders."""
    found = {p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(found)


def resolve(name_or_path: str | Path) -> Path:
    """The file of a space given by name (``cifar100``) or by path (``my/space.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in str(name_or_path):
        if not p.is_file():
            raise ConfigError(f"--space {name_or_path}: no such file; pass a space name or an existing YAML file")
        return p
    for d in search_dirs():
        if (d / f"{name_or_path}.yaml").is_file():
            return d / f"{name_or_path}.yaml"
    raise ConfigError(f"unknown space {str(name_or_path)!r}{config_mod.did_you_mean(str(name_or_path), names())}; "
                      f"choose one of {', '.join(names())} or pass a YAML path")


def load(name_or_path: str | Path, user: bool = False) -> Space:
    """Load and validate a space file; every error names the file and the key.

    ``user``: the space is for a user trainable given elsewhere (``--trainable``), though it names none.
    """
    path = resolve(name_or_path)
    raw = config_mod.read_yaml(path)
    src = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{src}: unknown key {unknown[0]!r}; valid keys: {', '.join(TOP_KEYS)}")
    trainable = raw.get("trainable")
    if trainable is not None:
        check_trainable(trainable, f"{src}: trainable")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{src}: base must be a mapping of configuration sections")
    user = user or trainable is not None
    metric = raw.get("metric", DEFAULT_METRIC)
    if not user and metric not in METRICS:
        raise ConfigError(f"{src}: metric {metric!r} cannot select; choose one of {', '.join(METRICS)} (the test "
                          f"split's figures are reported, never selected on)")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{src}: metric must be the name of a value the trainable reports")
    mode = raw.get("mode", METRICS.get(metric))
    if mode not in ("max", "min"):
        raise ConfigError(f"{src}: mode must be max or min but got {mode!r}")
    # a user trainable's numbers are its own: its metric selects, unless the space asks for one_se (which needs
    # val_acc, val_ce and val_count in its reports)
    rule = raw.get("rule", "metric" if user else DEFAULT_RULE)
    if rule not in config_mod.SELECT_RULES:
        raise ConfigError(f"{src}: rule {rule!r} is unknown; choose one of {', '.join(config_mod.SELECT_RULES)} "
                          f"(itra_tune.selection)")
    if not user:
        base = with_rule(base, rule, metric, mode, src)
    cfg = None if user else config_mod.from_dict(base, src)  # the engine's must be valid on its own
    keys = cfg.flat() if cfg is not None else config_mod.dotted(base)
    params = tuple(_param(key, spec, src, cfg, keys) for key, spec in (raw.get("search") or {}).items())
    budget = _section(raw, "budget", {"num_samples": int, "max_concurrent": int, "max_epochs": int,
                                      "confirm_share": float, "confirm_candidates": int}, src)
    if "max_epochs" in budget and not user:
        raise ConfigError(f"{src}: budget.max_epochs is for a space with a trainable; the engine's epochs are "
                          f"base.train.epochs")
    sched = raw.get("scheduler") or {"name": "asha"}
    if not isinstance(sched, dict) or sched.get("name", "asha") not in SCHEDULERS:
        given = str(sched.get("name")) if isinstance(sched, dict) else ""
        raise ConfigError(f"{src}: scheduler.name must be one of {', '.join(SCHEDULERS)}"
                          f"{config_mod.did_you_mean(given, SCHEDULERS)}")
    fraction = sched.get("grace_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction <= 1):
        raise ConfigError(f"{src}: scheduler.grace_fraction must be in (0, 1], a share of the epochs, but got "
                          f"{fraction!r}")
    if fraction is not None and "grace_period" in sched:
        raise ConfigError(f"{src}: scheduler: give grace_period (epochs) or grace_fraction (a share of the epochs), "
                          f"not both")
    res = _section(raw, "resources", {"cpus_per_trial": float, "gpus_per_trial": float, "workers_per_trial": int},
                   src)
    smoke = raw.get("smoke") or {}
    if not isinstance(smoke, dict):
        raise ConfigError(f"{src}: smoke must be a mapping of dotted keys to values")
    check_budget({**budget, **res}, src)
    return Space(name=raw.get("name", path.stem), path=path, base=base, params=params, metric=metric, mode=mode,
                 rule=rule,
                 scheduler={"name": "asha", **sched}, smoke=smoke, trainable=trainable, **budget, **res)


def with_rule(base: dict[str, Any], rule: str, metric: str, mode: str, src: str) -> dict[str, Any]:
    """The engine's base configuration with the space's selection rule as its ``select`` section: every trial,
    and the best configuration the search hands to production, then selects its epoch by the space's rule."""
    given = base.get("select") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{src}: base.select must be a mapping")
    for key, value in (("rule", rule), ("metric", metric), ("mode", mode)):
        if key in given and given[key] != value:
            raise ConfigError(f"{src}: base.select.{key} is {given[key]!r} but the space's {key} is {value!r}; set "
                              f"the rule once, as the space's top-level rule, metric and mode")
    if "epoch" in given:
        raise ConfigError(f"{src}: base.select.epoch is what a search writes into its best configuration; a space's "
                          f"trials select their own epoch (remove it)")
    return {**base, "select": {"rule": rule, "metric": metric, "mode": mode}}


def grace_epochs(scheduler: dict[str, Any], epochs: int) -> int:
    """The epochs before a trial can be stopped: ``grace_fraction`` of the epochs (rounded, at least 1), else
    ``grace_period``, else 1. A fraction follows ``train.epochs`` when an override changes them."""
    if scheduler.get("grace_fraction") is not None:
        return max(1, round(scheduler["grace_fraction"] * epochs))
    return int(scheduler.get("grace_period", 1))


def check_trainable(ref: Any, where: str) -> None:
    """A reference to a user's training function: ``package.module:function``."""
    module, sep, name = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not (sep and module and name and all(p.isidentifier() for p in module.split(".") + name.split("."))):
        raise ConfigError(f"{where}: expected package.module:function but got {ref!r}")


BUDGET_RULES = {  # key: (the file's section, the command line's flag, lowest value, whether the lowest is allowed)
    "num_samples": ("budget", "--num-samples", 1, True),
    "max_epochs": ("budget", "budget.max_epochs", 1, True),
    "max_concurrent": ("budget", "--max-concurrent", 1, True),
    "confirm_share": ("budget", "--confirm-share", 0, True),
    "confirm_candidates": ("budget", "--confirm-candidates", 1, True),
    "cpus_per_trial": ("resources", "--cpus-per-trial", 0, False),
    "gpus_per_trial": ("resources", "--gpus-per-trial", 0, True),
    "workers_per_trial": ("resources", "--workers-per-trial", 1, True),
}


def check_budget(values: dict[str, float], source: str) -> None:
    """The budget and resources of a search, from a space file (``source`` its path) or the command line.

    Raises:
        ConfigError naming the file's key or the flag, the rule and the value.
    """
    for key, value in values.items():
        section, flag, lowest, allowed = BUDGET_RULES[key]
        if key == "confirm_share" and value >= 1:
            rule = "must be below 1 (a share of the trainings: exploring needs the rest)"
        elif value > lowest or (allowed and value == lowest):
            continue
        else:
            rule = f"must be at least {lowest}" if allowed else f"must be above {lowest}"
        where = flag if source == "command line" else f"{source}: {section}.{key}"
        raise ConfigError(f"{where} {rule} but got {value}")


def _section(raw: dict[str, Any], name: str, keys: dict[str, type], src: str) -> dict[str, Any]:
    sec = raw.get(name) or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{src}: {name} must be a mapping")
    out = {}
    for k, v in sec.items():
        if k not in keys:
            raise ConfigError(f"{src}: unknown key '{name}.{k}'; valid keys: {', '.join(keys)}")
        tp = keys[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (tp is int and not isinstance(v, int)):
            raise ConfigError(f"{src}: {name}.{k} must be {tp.__name__}, got {v!r}")
        out[k] = tp(v)
    return out


def _param(key: str, spec: Any, src: str, base: Config | None, keys: dict[str, Any]) -> Param:
    """One ``search`` entry; ``base`` is the engine's configuration (None for a user trainable), ``keys`` its
    dotted keys."""
    where = f"{src}: search.{key}"
    if key not in keys and base is not None:
        raise ConfigError(f"{where}: not a configuration key; searchable keys look like loss.lam, data.batch_size")
    if key not in keys:
        raise ConfigError(f"{where}: not a key of base; searchable keys are {', '.join(keys) or 'none: base is empty'}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 0.1, high: 1.0}}")
    allowed = {"type", "low", "high", "log", "step", "choices"}
    bad = sorted(set(spec) - allowed)
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; valid keys: {', '.join(sorted(allowed))}")
    kind = spec.get("type")
    if kind not in PARAM_KINDS:
        raise ConfigError(f"{where}.type must be one of {', '.join(PARAM_KINDS)} but got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices must be a non-empty list")
        param = Param(key, kind, choices=tuple(choices))
        probes = [{key: c} for c in choices]
    else:
        low, high = spec.get("low"), spec.get("high")
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}.{name} must be a number but got {v!r}")
        if not low < high:
            raise ConfigError(f"{where}: empty range, low {low} must be below high {high}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0 but got {low}")
        param = Param(key, kind, float(low), float(high), log, spec.get("step"))
        probes = [{key: int(low) if kind == "int" else low}, {key: int(high) if kind == "int" else high}]
    for values in probes if base is not None else ():  # every end of the range must make a valid configuration
        try:
            config_mod.override(base, values, src)
        except ConfigError as e:
            reason = str(e).removeprefix(f"{src}: ")  # the file is named once, in ``where``
            raise ConfigError(f"{where}: value {list(values.values())[0]!r} is invalid here: {reason}") from None
    return param
