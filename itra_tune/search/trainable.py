"""The Ray adapter: the only caller of Tune's report and checkpoint API.

A trial's Tune config is ``{"base": <plain configuration>, "<dotted.key>": value, ...}``: the space's base
configuration and the values the searcher sampled. The trial reports every epoch with a checkpoint and,
on retry or resume, continues from its latest checkpoint rather than from scratch.

Two trainables: ``train_trial`` runs the engine; ``user_trial`` runs a user's own training function, either
``fn(config, report)`` (``Report``) or Ray's own convention ``fn(config)`` that calls ``ray.tune.report`` and
``ray.tune.get_checkpoint`` itself, with the same reports, so the rest of the search treats them alike.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from itra_tune import checkpoint, engine, losses, selection
from itra_tune import config as config_mod
from itra_tune.config import ConfigError

STATE_FILE = "state.pt"
SELECTION = "selection_score"  # reported with every epoch; Tune keeps the checkpoints it ranks highest
_tune_report = tune.report  # Tune's own, kept: a Ray-style trainable runs with ray.tune.report pointing at ours


def epoch_of(result: dict[str, Any]) -> int:
    """A result's epoch: what the trial reported as ``epoch``, else Tune's count of its reports."""
    value = result.get("epoch")
    return int(value if isinstance(value, (int, float)) and value == value else result.get("training_iteration", 0))


def trial_config(tune_config: dict[str, Any]) -> config_mod.Config:
    """The typed configuration of a trial: its base with the sampled dotted values applied."""
    params = {k: v for k, v in tune_config.items() if k != "base"}
    return config_mod.override(config_mod.from_dict(tune_config["base"], "trial"), params, "trial")


def user_config(tune_config: dict[str, Any]) -> dict[str, Any]:
    """The configuration a user trainable receives: its base (plain data) with the sampled dotted values set."""
    return config_mod.with_values(tune_config["base"], {k: v for k, v in tune_config.items() if k != "base"})


def trial_params(tune_config: dict[str, Any], user: bool = False) -> dict[str, Any]:
    """A trial's whole configuration as dotted keys, as MLflow records it; the engine's without ``select.epoch``,
    which a trial learns only when it ends (the epoch it hands over, recorded then)."""
    if user:
        return config_mod.dotted(user_config(tune_config))
    params = trial_config(tune_config).flat(written=True)
    if params.get("select.epoch") is None:
        params.pop("select.epoch", None)
    return params


# Reported by every trial with each epoch: where it trains. The Ray node, the GPU ids Ray assigned it (all its
# workers', "0,1"; "" for none) and the torch device it trains on; the record puts them on the trial's MLflow run.
PLACEMENT = ("node", "gpu_ids", "device")


def placement(device: str, gpu_ids: list[list[Any]] | None = None) -> dict[str, str]:
    """This process's Ray node, the GPU ids Ray gave it (or each worker's, ``gpu_ids``) and ``device``.

    A trial given GPU ids that CUDA cannot open (a cluster declaring logical GPUs, a node without a driver) says
    so in one line on its error stream and trains on the CPU under ``device: auto``; ``device: cuda`` makes it
    an error instead, raised by ``engine.resolve_device``.
    """
    import ray

    ids = gpu_ids if gpu_ids is not None else [ray.get_gpu_ids()]
    flat = [str(i) for worker in ids for i in worker]
    resolved = str(engine.resolve_device(device))
    if flat and not resolved.startswith("cuda"):
        print(f"itra_tune: Ray gave this trial GPU {','.join(flat)}, which CUDA cannot open here (torch sees no "
              f"CUDA device); training on the CPU (device: cuda makes this an error)", file=sys.stderr)
    return {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": ",".join(flat), "device": resolved,
            "started": time.time()}  # when it started here: with time_total_s, when it held the device


def train_trial(tune_config: dict[str, Any], metric: str = "val_acc", mode: str = "max",
                worker_resources: dict[str, float] | None = None, storage: str | None = None) -> None:
    """Tune function trainable: ``engine.fit`` with a report and checkpoint after every epoch.

    Each report carries ``selection_score`` (the space's ``metric`` and ``mode``). A diverging trial raises
    ``engine.Diverged``: Tune records it as an errored trial with that reason, the searcher marks the sample
    as failed, and the other trials go on. With ``train.workers_per_trial`` above 1 the trial runs as that
    many data-parallel workers of Ray Train (``train_workers``), each with ``worker_resources``.
    """
    cfg = trial_config(tune_config)
    if cfg.train.workers_per_trial > 1:
        train_workers(cfg, metric, mode, worker_resources or {"CPU": 1.0}, storage)
        return
    resume = _load(tune.get_checkpoint())
    on_epoch = _reporter(cfg, metric, mode, tune.report, tune.Checkpoint, extra=placement(cfg.device))
    if resume is not None and int(resume["epoch"]) >= cfg.train.epochs:
        # population based training can hand a lagging trial a finished trial's last checkpoint: nothing is left
        # to train, so the trial reports that epoch and ends where its checkpoint did (not one epoch short)
        on_epoch(resume["history"][-1], resume)
        return
    engine.fit(cfg, report=on_epoch, resume=resume)


def _load(ckpt: Any) -> dict[str, Any] | None:
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return checkpoint.load(Path(d) / STATE_FILE)


def _reporter(cfg: config_mod.Config, metric: str, mode: str, report: Callable[..., None], ckpt_cls: Any,
              keep: bool = True, extra: dict[str, Any] | None = None
              ) -> Callable[[dict[str, float], dict[str, Any]], None]:
    """The engine's per-epoch callback: metrics, lambda and the selection score (and ``extra``) to ``report``,
    with the state as a checkpoint when ``keep`` (a data-parallel trial's rank 0 keeps it, the other workers
    report alone)."""
    weighted = losses.weighted(cfg.loss.name)

    def on_epoch(metrics: dict[str, float], state: dict[str, Any]) -> None:
        # lambda with the metrics: under population based training it changes mid-trial
        payload = {**metrics, **({"lam": cfg.loss.lam} if weighted else {}),
                   SELECTION: selection.score(metrics, metric, mode), **(extra or {})}
        if not keep:
            report(payload)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(state, Path(d) / STATE_FILE)
            report(payload, checkpoint=ckpt_cls.from_directory(d))

    return on_epoch


# --- a trial of several data-parallel workers (Ray Train) -------------------------------------------------

# Reported by a data-parallel trial: the placement group holding its workers. Ray Train 2.60 frees it when the
# run ends, or, when Tune stops the trial first (a scheduler's stop), through a cleaner that asks Ray's state
# API, which a search's cluster (no dashboard) does not serve: the search frees it (tuner.FreeWorkers).
WORKERS_GROUP = "workers_placement_group"


def worker_loop(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: ``engine.fit`` in the workers' process group (``itra_tune.parallel``),
    resumed from the run's latest checkpoint; rank 0 reports the checkpoints."""
    import ray
    import torch.distributed as dist
    from ray import train
    from ray.util import get_current_placement_group

    cfg = config_mod.from_dict(loop_config["config"], "trial")
    rank = train.get_context().get_world_rank()
    group = get_current_placement_group()  # the workers' resources, which the search frees when the trial ends
    ids: list[Any] = [None] * train.get_context().get_world_size()  # every worker's GPU ids, in rank order
    dist.all_gather_object(ids, ray.get_gpu_ids())
    extra = {**placement(cfg.device, ids), **({WORKERS_GROUP: group.id.hex()} if group is not None else {})}
    on_epoch = _reporter(cfg, loop_config["metric"], loop_config["mode"], train.report, train.Checkpoint,
                         keep=rank == 0, extra=extra)
    resume = _load(train.get_checkpoint())
    if resume is not None:  # a restarted trial: Tune's results start afresh, so give them the epochs done so far
        again = _reporter(cfg, loop_config["metric"], loop_config["mode"], train.report, train.Checkpoint,
                          keep=False, extra=extra)
        for row in resume["history"]:
            again(row, {})
    engine.fit(cfg, report=on_epoch, resume=resume)


def train_workers(cfg: config_mod.Config, metric: str, mode: str, resources: dict[str, float],
                  storage: str | None) -> None:
    """One trial as ``cfg.train.workers_per_trial`` workers of Ray Train's ``TorchTrainer`` (gloo on CPUs, NCCL
    on GPUs), the pattern Ray gives for tuning distributed training: rank 0's metrics reach Tune through
    ``TuneReportCallback``; its checkpoints stay in the Train run's folder beside the trial (``checkpoint_path``
    in each result), and a restarted trial's run resumes from its latest one."""
    from ray import train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    context = tune.get_context()
    gpus = resources.get("GPU", 0.0)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": cfg.to_dict(), "metric": metric, "mode": mode},
        # NCCL where the GPUs open; on GPUs CUDA cannot open (logical ones) the workers train on CPUs, with gloo
        torch_config=TorchConfig(backend="nccl" if gpus and _cuda() else "gloo"),
        scaling_config=train.ScalingConfig(num_workers=cfg.train.workers_per_trial, use_gpu=gpus > 0,
                                           resources_per_worker=resources),
        run_config=train.RunConfig(
            name=f"{context.get_trial_name()}-workers", storage_path=storage or context.get_trial_dir(),
            callbacks=[TuneReportCallback()],
            checkpoint_config=train.CheckpointConfig(num_to_keep=4, checkpoint_score_attribute=SELECTION,
                                                     checkpoint_score_order="max")),
    )
    trainer.fit()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- a user's own training function ----------------------------------------------------------------------

# What Tune adds to every result; the rest of a user trainable's result is what it reported.
TUNE_KEYS = frozenset({"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
                       "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
                       "time_since_restore", "iterations_since_restore", "should_checkpoint", SELECTION, "epoch"})
EPOCH_FILE = "itra_tune_epoch.json"  # beside the user's checkpoint files: the report it was made at


def reported(result: dict[str, Any]) -> dict[str, float]:
    """The numbers a user trainable reported in a Tune result (without Tune's own keys, ``epoch`` and the score)."""
    return {k: float(v) for k, v in result.items()
            if k not in TUNE_KEYS and not k.startswith("config/") and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def resolve_trainable(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A user trainable: a callable, or ``package.module:function`` imported now (a ConfigError if it is not)."""
    if callable(ref):
        arity(ref)
        return ref
    module, _, name = ref.partition(":")
    try:
        fn: Any = importlib.import_module(module)
        for part in name.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"trainable {ref!r} cannot be imported ({type(e).__name__}: {e}); run from the folder "
                          f"that holds {module.split('.')[0]}, or install it") from None
    if not callable(fn):
        raise ConfigError(f"trainable {ref!r} is not a function")
    arity(fn)
    return fn


def trainable_ref(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a user trainable, as the search records it."""
    return f"{fn.__module__}:{fn.__qualname__}"


def ship_by_value(fn: Callable[..., Any]) -> None:
    """Let Ray pickle ``fn``'s module by value: the trial workers need not import the user's code themselves
    (it may live in a script, a notebook or a test folder that is not on their path)."""
    from ray import cloudpickle

    module = sys.modules.get(fn.__module__)
    if module is not None and fn.__module__ not in ("__main__", "builtins"):
        cloudpickle.register_pickle_by_value(module)


class Report:
    """What a user trainable calls after every epoch: ``report({"val_acc": 0.9, ...}, checkpoint=folder)``.

    Each call is one epoch (the schedulers' unit of time); the metrics must include the space's metric. A
    checkpoint folder is copied into the trial's storage; ``report.restored`` is the folder of the latest one
    when the trial resumes (after a failure, a killed driver or ``--resume``), else None, and ``report.epoch``
    the epochs already done.
    """

    def __init__(self, metric: str, mode: str, restored: Path | None = None, epoch: int = 0) -> None:
        self.metric, self.mode, self.restored, self.epoch = metric, mode, restored, epoch

    def __call__(self, metrics: dict[str, Any], checkpoint: str | Path | None = None) -> None:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"the trainable's report {sorted(metrics)} lacks a number for the space's metric "
                             f"{self.metric!r}")
        self.epoch += 1
        result = {**metrics, "epoch": self.epoch}
        result[SELECTION] = selection.score(result, self.metric, self.mode)
        if checkpoint is None:
            _tune_report(result)
            return
        with tempfile.TemporaryDirectory() as d:
            if isinstance(checkpoint, tune.Checkpoint):  # Ray's convention: a Checkpoint, not a folder
                checkpoint.to_directory(d)
            else:
                shutil.copytree(checkpoint, d, dirs_exist_ok=True)
            (Path(d) / EPOCH_FILE).write_text(json.dumps({"epoch": self.epoch}))
            _tune_report(result, checkpoint=tune.Checkpoint.from_directory(d))


def user_trial(tune_config: dict[str, Any], fn: Callable[..., Any], metric: str = "val_acc",
               mode: str = "max") -> None:
    """Tune function trainable around a user's ``fn(config, report)`` or Ray-style ``fn(config)``; resumes from
    its latest checkpoint."""
    config = user_config(tune_config)
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        _call(fn, config, Report(metric, mode))
        return
    with ckpt.as_directory() as d:
        epoch_file = Path(d) / EPOCH_FILE
        epoch = json.loads(epoch_file.read_text())["epoch"] if epoch_file.exists() else 0
        _call(fn, config, Report(metric, mode, Path(d), epoch))


def _call(fn: Callable[..., Any], config: dict[str, Any], report: Report) -> None:
    if arity(fn) == 2:
        fn(config, report)
        return
    import ray.tune

    def ray_report(metrics: dict[str, Any], *, checkpoint: Any = None, **_: Any) -> None:
        report(metrics, checkpoint=checkpoint)

    ray.tune.report = ray_report  # the trial's own process: Ray-style code reaches our report through it
    try:
        fn(config)
    finally:
        ray.tune.report = _tune_report


def arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments a trainable takes: 1 (Ray's ``fn(config)``) or 2 (``fn(config, report)``);
    ConfigError for any other signature."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if any(p.kind is p.VAR_POSITIONAL for p in params) or len(required) <= 2 <= len(positional):
        return 2
    if len(required) <= 1 <= len(positional):
        return 1
    raise ConfigError(f"trainable {trainable_ref(fn)} takes {len(required)} positional arguments; a trainable takes "
                      f"(config), reporting with ray.tune.report, or (config, report)")
