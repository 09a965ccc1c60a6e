"""Typed training configuration: frozen dataclasses, YAML loading, dotted overrides, validation.

A configuration file has up to six sections (``data``, ``model``, ``loss``, ``optim``, ``train``, ``select``) and
a top-level ``seed`` and ``device``. Unknown keys and wrong types are errors naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml


def _check_package() -> None:
    """One line, instead of a puzzling error later, when ``itra_tune`` resolved to a folder that is not this
    package: a folder named itra_tune (a clone of the repository, say) in the working folder or beside the script
    is imported as an empty namespace package, while the modules come from the installed package."""
    package = sys.modules.get("itra_tune")
    if package is None or getattr(package, "__file__", None) is not None:
        return
    shadow = next(iter(getattr(package, "__path__", [])), "?")
    line = (f"itra_tune resolves to the folder {shadow}, not to the installed package "
            f"({Path(__file__).resolve().parent}): run from another folder, or rename that folder")
    if sys.argv[:1] == ["-m"]:  # `python -m itra_tune...` is still locating its module: a command's bad input
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(line)


_check_package()


class ConfigError(ValueError):
    """Bad input from the user: the message is one line naming the problem and the fix."""


_REF = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
PREFIXES = ("timm", "hf", "torchvision")  # ``timm:NAME``, ``hf:NAME``, ``torchvision:NAME`` are registry names


def is_callable_ref(name: str) -> bool:
    """Whether ``name`` reads as ``package.module:callable`` (a user's model or dataset factory)."""
    return _REF.fullmatch(name) is not None and name.partition(":")[0] not in PREFIXES


def import_callable(ref: str, key: str) -> Any:
    """The callable that ``package.module:callable`` names, imported; a one-line ConfigError naming ``key`` (the
    configuration key) when the module cannot be imported or holds no such callable."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the module itself, not one it imports
            raise ConfigError(f"{key} {ref!r}: no module named {module_name!r}; run from the folder that holds "
                              f"it, or add that folder to PYTHONPATH") from None
        raise ConfigError(f"{key} {ref!r}: importing {module_name} failed: {e}") from None
    except Exception as e:  # the user's module raised while importing
        raise ConfigError(f"{key} {ref!r}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key} {ref!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key} {ref!r}: {attr} is a {type(obj).__name__}, not a callable")
    return obj


def code_root(ref: str) -> str:
    """The folder on ``sys.path`` that ``package.module:callable`` was imported from (import it first): what other
    processes (Ray's trial workers) need on their path to import it too."""
    module_name = ref.partition(":")[0]
    path = Path(sys.modules[module_name].__file__ or "").resolve()
    depth = module_name.count(".") + (path.name == "__init__.py")
    return str(path.parents[depth])


# The vocabularies of the configuration. Each is owned here; the modules that act on a name import it.
PAIRINGS = ("independent", "split", "detached", "memory")  # where S2 comes from (itra_tune.data.pairs)
SCHEDULES = ("cosine", "step", "none", "linear")
OPTIMIZERS = ("sgd", "adamw")
BANDWIDTHS = ("median", "mean", "fixed", "multiscale")  # kernel bandwidth schemes of itra_tune.mmd
# the gradient of the matching loss (itra_tune.losses.ITRA; its value is the paper's in every form). paper: the
# bandwidth detached (Sec. 4.1), so shrinking every feature lowers the loss, which collapses models whose features
# no normalization holds (docs/results/collapse.md); scale_invariant: the features' common scale taken out of the
# gradient, as if the bandwidth were carried in the graph; guarded: scale_invariant while CE is at chance, the
# paper's once the classifier has learned (CE below half of ln K), blended in between; gated (the default):
# guarded, with lambda scaled from 0 at chance to its full value once learned, by the same measure of CE
FORMS = ("gated", "guarded", "scale_invariant", "paper")
# what may select an epoch or a trial (itra_tune.selection): validation figures, never the test split's
SELECT_METRICS = {"val_ce": "min", "val_acc": "max"}
SELECT_RULES = ("one_se", "one_se_ce", "metric")  # itra_tune.selection
UNRANKED = ("failed", "collapsed")  # trial statuses that never rank: an error, or a matching loss's collapse
ENGINE = "itra_tune.engine"  # the trainable a search records when it trains with the engine, not a user's


def check_lam(lam: float, key: str = "loss.lam") -> None:
    """The weight of a matching or center loss: a ConfigError unless ``lam >= 0``."""
    if not lam >= 0.0:
        raise ConfigError(f"{key} cannot be negative but got {lam}")


def check_bandwidth(scheme: str, sigma: float | None, key: str = "loss") -> None:
    """A bandwidth scheme and its sigma: a known scheme, sigma positive, and given for ``fixed``."""
    if scheme not in BANDWIDTHS:
        raise ConfigError(f"{key}.bandwidth: unknown bandwidth scheme {scheme!r}; "
                          f"choose one of {', '.join(BANDWIDTHS)}")
    if sigma is not None and not sigma > 0:
        raise ConfigError(f"{key}.sigma must be positive or null but got {sigma}")
    if scheme == "fixed" and sigma is None:
        raise ConfigError(f"{key}.sigma is required when {key}.bandwidth is 'fixed'")


@dataclass(frozen=True)
class DataConfig:
    # a bundled or paper dataset (digits, synthetic, fmnist, kmnist, cifar10, cifar100, stl10, imagenet; text:
    # ag_news, amazon_full, yahoo_answers, yelp_full, ag_news_test_folds), your own text (csv, hf_disk), or
    # package.module:callable returning your (train, test) image datasets
    name: str = "digits"
    root: str | None = None  # folder holding the dataset; None: $ITRA_TUNE_DATA or ~/.cache/itra_tune/data
    download: bool = False  # let torchvision download a missing dataset (needs network)
    val_fraction: float = 0.1  # share of the training set held out for model selection
    split_seed: int = 0  # seed of the train/validation split, independent of the training seed
    subset: int | None = None  # cap on training examples (after the split), for quick runs
    batch_size: int = 128  # m1: examples in S1 per step
    second_batch_size: int | None = None  # m2: examples in S2; None means m2 = m1
    # where the second mini-batch S2 comes from (itra_tune.data.pairs): independent (the paper's, Eq. 3): its own
    # sampler, through the network with S1; split: halves of one batch; detached: its own sampler, features
    # without gradient; memory: the features of the last memory_batches S1 batches, no extra forward
    pairing: str = "independent"
    memory_batches: int = 4  # memory: how many past S1 batches S2 holds
    augment: bool = True  # the dataset's usual augmentation (crop, flip), done on the device
    eval_batch_size: int = 1024  # examples per batch when evaluating the validation and test splits
    num_workers: int = 2  # loader workers, for folder-of-images data only
    max_length: int = 128  # text: tokens per example after truncation (batches are padded to their longest)
    tokenizer: str | None = None  # text: tokenizer name or folder; None uses the model's own
    cache_dir: str | None = None  # text: token cache; None: $ITRA_TUNE_CACHE or ~/.cache/itra_tune/tokens
    # your own text (data.name csv or hf_disk): the CSV file or folder, or the save_to_disk folder, and its columns
    path: str | None = None
    text_column: str = "text"  # one or several, comma-separated (joined by a space)
    label_column: str = "label"  # strings are numbered in sorted order and keep their names (Data.labels)


@dataclass(frozen=True)
class ModelConfig:
    # resnet18, resnet101, vgg13, mobilenet_v2 (CIFAR-style), resnet18_imagenet, resnet50_imagenet, small_cnn,
    # mlp; text: bert-base-uncased, distilbert-base-uncased, xlnet-base-cased, minilm, hf:NAME, org/NAME or a
    # checkpoint folder; timm:NAME; torchvision:NAME; package.module:callable, a factory of yours
    name: str = "small_cnn"
    pretrained: bool = False  # torchvision ImageNet weights, or a Hugging Face checkpoint's own weights
    # keyword arguments of the model's builder: timm's create_model (timm:NAME), torchvision's get_model
    # (torchvision:NAME) or your factory, e.g. {patch_size: 4, drop_path_rate: 0.1}; set one with
    # --set model.options.patch_size=4
    options: dict[str, Any] = field(default_factory=dict)

    _hint = " (a model's own arguments go under model.options, e.g. model.options.patch_size)"


@dataclass(frozen=True)
class LossConfig:
    name: str = "itra_c"  # ce | lsr (label smoothing) | center (center loss) | itra (Eq. 4) | itra_c (Eq. 6)
    lam: float = 0.6  # lambda: weight of the matching loss (Eq. 4, 6) or of the center loss
    bandwidth: str = "median"  # kernel bandwidth scheme of the MMD
    sigma: float | None = None  # bandwidth for 'fixed', base scale for 'multiscale', in squared feature units
    form: str = "gated"  # gated | guarded | scale_invariant | paper (the paper's exact form): see FORMS
    # 0: the bandwidth of each batch (the paper's). m in (0, 1]: median and mean (and multiscale's base) follow
    # the batches through an exponential moving average, sigma <- m sigma + (1 - m) sigma_batch; 1 keeps the first
    # batch's. Breaks the feedback of a bandwidth that shrinks with collapsing features (not the paper's).
    sigma_ema: float = 0.0
    lam_warmup_steps: int = 0  # lambda ramps up linearly from 0 over this many optimizer steps (0: from the start)
    eps: float = 0.1  # label smoothing for 'lsr'
    center_lr: float = 0.5  # learning rate of the class centers for 'center' (Wen et al. 2016)


_MATCHING = ("lam", "bandwidth", "sigma", "form", "sigma_ema", "lam_warmup_steps")
# the keys of the loss section each loss reads besides its name (tests/test_config.py holds the losses to it)
LOSS_READS = {"ce": (), "lsr": ("eps",), "center": ("lam", "center_lr"), "itra": _MATCHING, "itra_c": _MATCHING}


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd (with momentum) | adamw
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # sgd's momentum (adamw's beta1 stays torch's)
    nesterov: bool = True  # sgd: Nesterov momentum
    weight_decay: float = 5e-4  # L2 for sgd, decoupled for adamw
    schedule: str = "cosine"  # cosine | step | none (per epoch, after warmup_epochs) | linear (per step)
    milestones: tuple[int, ...] = ()  # epochs at which 'step' multiplies the rate by gamma
    gamma: float = 0.1  # 'step': the rate's factor at each milestone
    warmup_epochs: int = 0  # cosine, step, none: linear warm-up from lr / 10 over this many epochs
    warmup_fraction: float = 0.0  # linear: share of all steps spent warming up from 0, then linear decay to 0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training split; the schedule spans them
    amp: bool = True  # bfloat16 autocast, on CUDA only
    channels_last: bool = True  # on CUDA only
    compactness_samples: int = 512  # test examples per batch for the compactness metric
    # torch's intra-op CPU threads while training; null leaves torch's own setting. A search records each trial's
    # (its CPUs), so retraining its best configuration on a CPU reproduces the trial's metrics exactly.
    threads: int | None = None
    # a search trial's data-parallel workers (Ray Train, itra_tune.parallel): each takes data.batch_size rows of
    # every global batch, and the matching loss sees all of them. Outside a search, a process group started by
    # torchrun is used as it is; with none, training runs in one process whatever this says.
    workers_per_trial: int = 1
    sync_batchnorm: bool = False  # with several workers: BatchNorm over the global batch (nn.SyncBatchNorm)


@dataclass(frozen=True)
class SelectConfig:
    """Which epoch a run hands over (``itra_tune.selection``): the rule a search ranks its trials by, written into
    the configuration it hands to production, so that retraining selects what the search selected."""

    # one_se: the lowest validation CE among the epochs whose validation accuracy is within one standard error of
    # the best; one_se_ce: the same, unless the lowest validation CE is lower by more than its standard error;
    # metric: the metric below alone. one_se by default: one validation split cannot rank closer
    # accuracies, and CE ranks the tied ones as their test CE does (docs/results/search-quality.md)
    rule: str = "one_se"
    # the validation figure that selects under the metric rule (val_ce or val_acc; ties go to the lower val_ce,
    # then the earlier epoch), and that a search samples on and stops trials by
    metric: str = "val_ce"
    mode: str = "min"  # min | max: which way the metric improves
    # the epoch the search selected (written by the search into its best configuration). Without a validation
    # split (--full-train) nothing can be selected: training stops at this epoch of the same schedule and hands it
    # over; null hands over the last epoch
    epoch: int | None = None


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    seed: int = 0  # drives initialization, shuffling, augmentation and S2 (the split has data.split_seed)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def written(self) -> dict[str, Any]:
        """The configuration as files and trackers show it: ``to_dict`` without the loss keys its loss does not
        read (an ITRA-c configuration carries no ``loss.eps``); loaded back, it trains the same."""
        raw = self.to_dict()
        raw["loss"] = {k: v for k, v in raw["loss"].items() if k == "name" or k in LOSS_READS[self.loss.name]}
        return raw

    def flat(self, written: bool = False) -> dict[str, Any]:
        """The configuration as dotted keys, e.g. ``{"loss.lam": 0.6, "model.options.patch_size": 4, ...}``;
        ``written``: of ``written()``."""
        return dotted(self.written() if written else self.to_dict())


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a Config from nested plain data; ``source`` names the origin in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    cfg = _build(Config, raw, source, prefix="")
    validate(cfg, source)
    return cfg


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML configuration file and apply ``key=value`` dotted overrides."""
    raw = read_yaml(path)
    return from_dict(apply_overrides(raw, overrides), str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` of a file, with one-line errors for missing and malformed files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; pass the path of a YAML configuration")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{p}: malformed YAML{line}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted ``key=value`` overrides; values are parsed as YAML scalars."""
    out = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. loss.lam=0.8")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set_path(out, key.strip(), value)
    return out


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of plain nested data with dotted-key values set, e.g. ``{"optim.lr": 0.1}`` (no validation: the
    configuration of a user's trainable is theirs)."""
    out = _deep_copy(raw)
    for key, value in values.items():
        _set_path(out, key, value)
    return out


def dotted(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"loss": {"lam": 1}}`` -> ``{"loss.lam": 1}``."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(dotted(v, key) if isinstance(v, dict) else {key: v})
    return out


def override(cfg: Config, values: dict[str, Any], source: str = "override") -> Config:
    """A new, validated Config with dotted-key values applied, e.g. ``{"loss.lam": 0.8}``."""
    raw = cfg.to_dict()
    for key, value in values.items():
        _set_path(raw, key, value)
    return from_dict(raw, source)


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def validate(cfg: Config, source: str = "config") -> None:
    """Range checks that the types alone do not express."""
    d, lo, o, t, se = cfg.data, cfg.loss, cfg.optim, cfg.train, cfg.select
    checks = [
        (d.batch_size > 0, "data.batch_size", f"must be a positive integer but got {d.batch_size}"),
        (d.second_batch_size is None or d.second_batch_size > 0, "data.second_batch_size",
         f"must be a positive integer or null but got {d.second_batch_size}"),
        (d.eval_batch_size > 0, "data.eval_batch_size", f"must be positive but got {d.eval_batch_size}"),
        (0.0 <= d.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1) but got {d.val_fraction}"),
        (d.subset is None or d.subset > 0, "data.subset", f"must be positive or null but got {d.subset}"),
        (d.memory_batches > 0, "data.memory_batches", f"must be a positive integer but got {d.memory_batches}"),
        (d.pairing in PAIRINGS, "data.pairing", f"unknown pairing {d.pairing!r}; choose one of {', '.join(PAIRINGS)}"),
        (lo.form in FORMS, "loss.form", f"unknown form {lo.form!r}; choose one of {', '.join(FORMS)}"),
        (0.0 <= lo.eps < 1.0, "loss.eps", f"must be in [0, 1) but got {lo.eps}"),
        (0.0 <= lo.sigma_ema <= 1.0, "loss.sigma_ema", f"must be in [0, 1] but got {lo.sigma_ema}"),
        (lo.lam_warmup_steps >= 0, "loss.lam_warmup_steps", f"cannot be negative but got {lo.lam_warmup_steps}"),
        (lo.center_lr > 0, "loss.center_lr", f"must be positive but got {lo.center_lr}"),
        (o.name in OPTIMIZERS, "optim.name", f"unknown optimizer {o.name!r}; choose one of {', '.join(OPTIMIZERS)}"),
        (o.lr > 0, "optim.lr", f"must be positive but got {o.lr}"),
        (o.weight_decay >= 0, "optim.weight_decay", f"cannot be negative but got {o.weight_decay}"),
        (o.schedule in SCHEDULES, "optim.schedule",
         f"unknown schedule {o.schedule!r}; choose one of {', '.join(SCHEDULES)}"),
        (o.warmup_epochs >= 0, "optim.warmup_epochs", f"cannot be negative but got {o.warmup_epochs}"),
        (0.0 <= o.warmup_fraction < 1.0, "optim.warmup_fraction", f"must be in [0, 1) but got {o.warmup_fraction}"),
        (d.max_length > 1, "data.max_length", f"must be at least 2 but got {d.max_length}"),
        (t.epochs > 0, "train.epochs", f"must be a positive integer but got {t.epochs}"),
        (t.compactness_samples > 1, "train.compactness_samples", f"must be at least 2 but got {t.compactness_samples}"),
        (t.threads is None or t.threads > 0, "train.threads",
         f"must be a positive integer or null but got {t.threads}"),
        (t.workers_per_trial >= 1, "train.workers_per_trial", f"must be at least 1 but got {t.workers_per_trial}"),
        (se.rule in SELECT_RULES, "select.rule", f"unknown rule {se.rule!r}; choose one of {', '.join(SELECT_RULES)}"),
        (se.metric in SELECT_METRICS, "select.metric",
         f"{se.metric!r} cannot select; choose one of {', '.join(SELECT_METRICS)} (validation figures)"),
        (se.mode in ("min", "max"), "select.mode", f"must be min or max but got {se.mode!r}"),
        (se.epoch is None or 1 <= se.epoch <= t.epochs, "select.epoch",
         f"must be null or an epoch from 1 to train.epochs ({t.epochs}) but got {se.epoch}"),
    ]
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {key} {message}")
    try:
        check_lam(lo.lam)
        check_bandwidth(lo.bandwidth, lo.sigma)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped ``word``, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- building dataclasses from plain data, with errors that name the key -------------------------


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'{did_you_mean(unknown[0], known)}; valid keys here: "
            f"{', '.join(sorted(known))}{getattr(cls, '_hint', '')}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
            kwargs[name] = _build(tp, value, source, f"{key}.")
        else:
            kwargs[name] = _coerce(value, tp, source, key)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, key)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{source}: {key} must be a mapping of names to values, got {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], source, key) for v in value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-4 as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {key} must be {tp.__name__}, got {value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deep_copy(raw: Any) -> Any:
    return {k: _deep_copy(v) for k, v in raw.items()} if isinstance(raw, dict) else raw


__all__ = [
    "BANDWIDTHS", "PAIRINGS", "SELECT_METRICS", "SELECT_RULES", "Config", "ConfigError", "DataConfig", "LossConfig",
    "ModelConfig",
    "OptimConfig", "SelectConfig", "TrainConfig", "apply_overrides", "check_bandwidth", "check_lam", "code_version",
    "code_root", "from_dict", "import_callable", "is_callable_ref", "load", "override", "read_yaml", "replace",
    "validate",
]


CODE_PATHS = ("itra_tune", "search_spaces", "pipelines", "benchmarks", "pyproject.toml")


def code_version() -> str:
    """The package version and, inside a git checkout, the commit (with '.dirty' for local changes to the code: the
    package, the spaces, the pipelines and the benchmarks; not to the documentation or the results it holds)."""
    import subprocess

    from itra_tune import __version__

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here.parent), "status", "--porcelain", "--untracked-files=no",
                                "--", *CODE_PATHS], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__
