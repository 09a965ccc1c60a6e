"""The training engine: one epoch, evaluation, and ``fit``. It knows nothing of Ray, MLflow or the data's
modality: the data hands it ``Step``s (S1 and S2 ready for one forward pass) and the models take them as they are.

``fit(config, report)`` calls ``report(metrics, checkpoint)`` after every epoch, where ``checkpoint`` is
everything needed to resume bit-for-bit (model, loss, optimizer, schedule, data streams, RNG, history).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from itra_tune import data as data_mod
from itra_tune import losses, models, parallel, selection
from itra_tune.config import Config, ConfigError, DataConfig, OptimConfig, SelectConfig
from itra_tune.data import Step, memory_rows

Report = Callable[[dict[str, float], dict[str, Any]], None]
METRICS = ("train_ce", "val_acc", "val_ce", "test_acc", "test_ce", "match_loss", "compactness")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Collapsed(Diverged, losses.CollapseError):
    """The matching loss collapsed the features (``losses.CollapseWatch``): the trial ends like a diverged one."""


@dataclass(repr=False)
class FitResult:
    model: models.Classifier
    history: list[dict[str, float]]  # one row of metrics per epoch
    best: dict[str, float]  # the epoch's row the run hands over (itra_tune.selection, by config.select)

    def __repr__(self) -> str:
        keep = ("epoch", "val_acc", "val_ce", "test_acc", "test_ce")
        best = {k: round(v, 4) for k, v in self.best.items() if k in keep}
        return f"FitResult({type(self.model).__name__}, {len(self.history)} epochs, best={best})"


def check(cfg: Config, here: bool = True) -> None:
    """Raise ConfigError for names no registry knows, before any data is loaded or file written. ``here``: the
    configuration trains on this machine, whose devices are checked too (a search's trials open theirs)."""
    data_modality = data_mod.modality(cfg.data.name)
    models.check_name(cfg.model.name)
    losses.check_name(cfg.loss.name)
    resolve_device(cfg.device) if here else parse_device(cfg.device)
    if models.modality(cfg.model.name) not in (data_modality, "any"):
        wants = "a text model (e.g. model.name=minilm)" if data_modality == "text" else \
            "an image model (e.g. model.name=resnet18)"
        raise ConfigError(f"data.name {cfg.data.name!r} needs {wants}, not model.name {cfg.model.name!r}")
    if data_modality == "text" and models.modality(cfg.model.name) == "any" and not cfg.data.tokenizer:
        raise ConfigError(f"data.tokenizer: model.name {cfg.model.name!r} is a factory of yours, which brings no "
                          f"tokenizer; set data.tokenizer to the Hugging Face tokenizer (a name or a folder) its "
                          f"token ids come from")


def check_available(cfg: Config) -> None:
    """Raise ConfigError now, rather than in every trial, when the model or the data is not at hand (the model's
    first: a missing extra is what to fix before looking for the data)."""
    models.check_available(cfg.model.name, cfg.model.options)
    data_mod.check_available(cfg.data)


def parse_device(name: str) -> torch.device | None:
    """``device`` as torch names it (None for ``auto``), without asking whether it is here: a search checks the
    name on its driver, which may have no GPU, and each trial opens the device where it runs."""
    if name == "auto":
        return None
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N (device)") from None


def resolve_device(name: str) -> torch.device:
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA GPU is visible; use device=auto or cpu")
    return device


def build_schedule(cfg: OptimConfig, optimizer: torch.optim.Optimizer, epochs: int,
                   steps_per_epoch: int) -> tuple[LRScheduler, bool]:
    """The learning-rate schedule, from torch's schedulers, and whether it steps per optimizer step.

    ``linear`` (for fine-tuning transformers) steps per optimizer step: warm-up from 0 over
    ``warmup_fraction`` of all steps, then linear decay to 0. The others step per epoch: warm-up from lr / 10
    over ``warmup_epochs``, then cosine (to 0 at the last epoch), step (times ``gamma`` at each milestone)
    or constant.
    """
    from torch.optim import lr_scheduler as ls

    if cfg.schedule == "linear":
        total = epochs * steps_per_epoch
        warm = int(cfg.warmup_fraction * total)
        decay = ls.LinearLR(optimizer, 1.0, 0.0, total_iters=max(1, total - warm))
        if warm == 0:
            return decay, True
        rise = ls.LinearLR(optimizer, 1.0 / (warm + 1), 1.0, total_iters=warm)
        return ls.SequentialLR(optimizer, [rise, decay], milestones=[warm]), True
    warm = min(cfg.warmup_epochs, epochs)
    if cfg.schedule == "cosine":
        main: LRScheduler = ls.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warm))
    elif cfg.schedule == "step":
        main = ls.MultiStepLR(optimizer, [max(1, m - warm) for m in cfg.milestones], gamma=cfg.gamma)
    else:
        main = ls.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warm == 0:
        return main, False
    rise = ls.LinearLR(optimizer, 0.1, 1.0, total_iters=warm)
    return ls.SequentialLR(optimizer, [rise, main], milestones=[warm]), False


def build_optimizer(cfg: Config, model: nn.Module, loss_fn: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = [{"params": list(model.parameters())}]
    extra = list(loss_fn.parameters())  # class centers: their own rate, no weight decay
    if extra:
        groups.append({"params": extra, "lr": cfg.loss.center_lr, "weight_decay": 0.0})
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                           weight_decay=o.weight_decay)


def load_optimization(optimizer: torch.optim.Optimizer, schedule: LRScheduler, optimizer_state: dict[str, Any],
                      schedule_state: dict[str, Any]) -> None:
    """Restore the optimizer's and the schedule's state, keeping the hyperparameters they were built with.

    Loading an optimizer's state also loads its hyperparameters (rate, momentum, weight decay). A checkpoint
    resumed under a changed configuration (population based training hands a trial another trial's checkpoint
    with mutated values) must train on with the new ones: every hyperparameter of a group is the new one, and
    the schedule is rescaled so that its peak rate is the new ``lr`` at the position the checkpoint reached.
    Under an unchanged configuration this is exactly ``load_state_dict``.
    """
    built = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(optimizer_state)
    schedule.load_state_dict(schedule_state)
    ratios = []
    for group, new in zip(optimizer.param_groups, built):
        ratio = new["initial_lr"] / group["initial_lr"] if group.get("initial_lr") else 1.0
        ratios.append(ratio)
        lr = group["lr"] * ratio
        group.update(new, lr=lr)
    if any(r != 1.0 for r in ratios):
        for sched in [schedule, *getattr(schedule, "_schedulers", [])]:
            sched.base_lrs = [b * r for b, r in zip(sched.base_lrs, ratios)]
            sched._last_lr = [g["lr"] for g in optimizer.param_groups]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when ``enabled``; nothing elsewhere."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step_loss(model: models.Classifier, loss_fn: nn.Module, step: Step,
                    net: nn.Module | None = None) -> losses.Parts:
    """The loss of one step: what the Step says goes through the network with gradients in one forward pass
    (S1, and S2 under ``independent`` or ``split``), S2 without gradient under ``detached``; then the loss's
    parts. Under ``memory`` the loss matches S1 against its own memory.

    ``net``: the data-parallel forward (``parallel.wrap``) when this is one of several workers; the matching
    loss then sees every worker's features (gathered with their gradients) and the cross-entropy this worker's.
    """
    if net is not None:
        h, logits = net(step.x, step.ce_rows)  # (m1 [+ m2], D), (ce_rows, K)
    else:
        h = model.features(step.x)  # (m1 [+ m2], D)
        logits = model.head(h[: step.ce_rows])
    m1, ce_y = step.m1, step.y[: step.ce_rows]
    if not getattr(loss_fn, "needs_second_batch", False):
        return loss_fn(logits, ce_y, h[:m1], y1=step.y[:m1])
    gather = parallel.gather
    if step.x2 is not None:
        with torch.no_grad():
            h2 = model.features(step.x2)  # (m2, D), no graph: the matching gradient flows through S1 alone
        return loss_fn(logits, ce_y, gather(h[:m1]), gather(h2), gather(step.y2), y1=gather(step.y[:m1]))
    if step.paired:
        return loss_fn(logits, ce_y, gather(h[:m1]), gather(h[m1:]), gather(step.y[m1:]), y1=gather(step.y[:m1]))
    return loss_fn(logits, ce_y, gather(h), y1=gather(step.y))


def train_epoch(model: models.Classifier, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                schedule: LRScheduler | None, steps_of_epoch: Any, device: torch.device, amp: bool,
                channels_last: bool, progress: Any = None, net: nn.Module | None = None) -> dict[str, float]:
    """One pass over the training Steps, stepping ``schedule`` (when given) per step; returns mean losses (over
    every worker's, when ``net`` is a data-parallel forward)."""
    model.train()
    sums = torch.zeros(4, device=device)  # total, ce, match, center; synchronised once per epoch
    steps = 0
    centers = list(loss_fn.parameters())
    for step in steps_of_epoch:
        if channels_last and step.x.dim() == 4:
            step.x = step.x.contiguous(memory_format=torch.channels_last)
            if step.x2 is not None:
                step.x2 = step.x2.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            parts = train_step_loss(model, loss_fn, step, net)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        parallel.average_gradients(centers)  # the model's are averaged by DistributedDataParallel
        optimizer.step()
        if schedule is not None:
            schedule.step()
        sums += torch.stack([p.detach().float() for p in parts])
        steps += 1
        if progress is not None:
            progress.update(1)
    means = (parallel.mean(sums) / max(steps, 1)).tolist()
    if not math.isfinite(means[0]):
        raise Diverged(f"training loss became {means[0]} (lr {optimizer.param_groups[0]['lr']:.3g})")
    # the matching loss's own watch (losses.CollapseWatch); every worker ends together, or the others would hang
    reason = getattr(loss_fn, "collapse", None)
    if parallel.mean(torch.tensor(float(reason is not None), device=device)).item() > 0:
        raise Collapsed(f"{reason or 'collapsed on another worker'} (lambda {loss_fn.lam}, form {loss_fn.form})")
    out = dict(zip(("train_loss", "train_ce", "match_loss", "center_loss"), means))
    applied = loss_fn.applied_lam() if hasattr(loss_fn, "applied_lam") else None
    if applied is not None:  # the gate's lambda, as the matching loss was weighted this epoch
        out["lam_applied"] = parallel.mean(torch.tensor(applied, device=device)).item()
    return out


def unmatched(history: list[dict[str, float]], lam: float) -> str | None:
    """Why a run whose configured lambda is positive trained as plain CE, or None: the lambda applied
    (``lam_applied``, the gate's) was 0 in every epoch."""
    applied = [row["lam_applied"] for row in history if "lam_applied" in row]
    if lam > 0 and applied and max(applied) == 0:
        return (f"lambda {lam:g} was applied as 0 in every epoch: the gated form holds the matching loss back "
                f"while CE is at chance, and it never left chance; this run trained as plain CE")
    return None


class Evaluation(NamedTuple):
    """The figures of one pass over a split."""

    acc: float
    ce: float  # the mean cross-entropy
    ce_se: float  # its standard error: the per-example CE's standard deviation over sqrt(n)
    features: Tensor | None = None  # those of ``evaluate``'s ``keep`` rows, in its order


@torch.no_grad()
def evaluate(model: nn.Module, batches: Any, device: torch.device, amp: bool = False,
             keep: Tensor | None = None) -> Evaluation:
    """Accuracy, mean cross-entropy and its standard error over all examples of ``batches``; with ``keep`` (rows of
    the examples, in the order ``batches`` yields them), also the features of those rows, in ``keep``'s order, from
    the same forward pass (what ``compactness`` measures, without a pass of its own)."""
    model.eval()
    correct = torch.zeros((), device=device)
    ce = torch.zeros((), device=device, dtype=torch.float64)
    ce_sq = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    kept: list[Tensor] = []
    if keep is not None:
        slot = torch.full((int(keep.max()) + 1,), -1, dtype=torch.long, device=keep.device)
        slot[keep] = torch.arange(keep.numel(), device=keep.device)  # a row's place in keep, or -1
    for x, y in batches:
        with autocast(device, amp):
            if keep is None:
                logits = model(x).float()
            else:
                h = model.features(x)
                logits = model.head(h).float()
                places = slot[n:n + y.shape[0]]
                kept.append((places[places >= 0], h[: places.numel()][places >= 0].float()))
        per = F.cross_entropy(logits, y, reduction="none").double()
        ce += per.sum()
        ce_sq += per.square().sum()
        correct += (logits.argmax(1) == y).sum()
        n += y.shape[0]
    acc, mean_ce = (correct / max(n, 1)).item(), (ce / max(n, 1)).item()
    var = (ce_sq.item() - n * mean_ce ** 2) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(max(var, 0.0) / n) if n > 1 else math.nan
    if keep is None:
        return Evaluation(acc, mean_ce, se)
    features = torch.empty(keep.numel(), model.feature_dim, device=device)
    for places, h in kept:
        features[places] = h
    return Evaluation(acc, mean_ce, se, features)


@torch.no_grad()
def compactness(model: models.Classifier, x: Tensor | None, y: Tensor, features: Tensor | None = None) -> float:
    """The paper's Figure 1 (left): feature distance between same-class samples of two different batches.

    ``x`` is split into two batches; the mean distance over same-class cross-batch pairs is divided by the
    mean distance over all cross-batch pairs, so the figure does not move with the scale of the features.
    Lower is more compact. ``features``: those of ``x``, when they are computed already (``x`` unused).
    """
    model.eval()
    h = features if features is not None else torch.cat([model.features(chunk).float() for chunk in x.split(256)])
    n = h.shape[0] // 2
    d = torch.cdist(h[:n], h[n:2 * n])  # (n, n)
    same = y[:n, None] == y[None, n:2 * n]
    return (d[same].mean() / d.mean().clamp_min(1e-12)).item() if same.any() else float("nan")


def fit(config: Config, report: Report | None = None, resume: dict[str, Any] | None = None,
        progress: bool = False) -> FitResult:
    """Train a configuration; call ``report(metrics, checkpoint)`` after every epoch.

    Args:
        config: the full training configuration.
        report: called with the epoch's metrics and a resumable checkpoint (references, not copies).
        resume: a checkpoint given to ``report`` earlier; training continues after its epoch.
        progress: show a progress bar over each epoch's steps.

    Returns:
        The trained model (last epoch), the per-epoch history, and the selected epoch's metrics
        (``itra_tune.selection``: by ``config.select``). Without a validation split, a configuration whose
        ``select.epoch`` is set trains to that epoch of its schedule and hands it over.
    """
    check(config)
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    rng_devices = [device.index or 0] if cuda else []
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=rng_devices):  # seeds are arguments; the caller's RNG is untouched
            torch.manual_seed(config.seed)
            if config.train.threads is not None:  # CPU results depend on it: reductions split by thread
                torch.set_num_threads(config.train.threads)
            return _fit(config, device, report, resume, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(config: Config, device: torch.device, report: Report | None, resume: dict[str, Any] | None,
         progress: bool) -> FitResult:
    cuda = device.type == "cuda"
    amp, channels_last = cuda and config.train.amp, cuda and config.train.channels_last
    workers, rank = parallel.world(), parallel.rank()
    data_cfg = config.data  # with several workers, one global batch of every worker's m rows per step
    if workers > 1:
        data_cfg = replace(data_cfg, batch_size=data_cfg.batch_size * workers,
                           second_batch_size=data_cfg.second_batch_size and data_cfg.second_batch_size * workers)
    data, model, loss_fn, net, optimizer = build_training(config, data_cfg, device, channels_last)
    steps_of_epoch = parallel.Sharded(data.train, rank, workers)
    schedule, per_step = build_schedule(config.optim, optimizer, config.train.epochs, len(data.train))
    history: list[dict[str, float]] = []
    kept: dict[int, dict[str, Tensor]] = {}  # epoch -> weights (on the CPU) of the epochs it may still hand over
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        loss_fn.load_state_dict(resume["loss"])
        load_optimization(optimizer, schedule, resume["optimizer"], resume["schedule"])
        data.load_state_dict(resume["data"])
        torch.set_rng_state(resume["rng"])
        history, start = list(resume["history"]), int(resume["epoch"])
        kept = {int(e): w for e, w in resume.get("kept", {}).items()}
        kept[start] = _cpu(model.state_dict())
    rows_c = data.sample_index("test", 2 * config.train.compactness_samples)  # compactness: these test rows
    y_c = data.sample("test", 2 * config.train.compactness_samples)[1]
    last = selection.stop_epoch(config.select, config.train.epochs, validated=data.val is not None)
    val_count = examples(data.val) if data.val is not None else None

    for epoch in range(start, last):
        t0 = time.perf_counter()
        bar = _bar(progress, len(data.train), f"epoch {epoch + 1}/{config.train.epochs}")
        lr = optimizer.param_groups[0]["lr"]
        try:
            row = train_epoch(model, loss_fn, optimizer, schedule if per_step else None, steps_of_epoch, device,
                              amp, channels_last, bar, net)
        finally:
            if bar is not None:
                bar.close()
        if not per_step:
            schedule.step()
        if data.val is not None:  # without a validation split nothing is selected: no val_* metrics at all
            val = evaluate(model, data.val, device, amp)
            row["val_acc"], row["val_ce"], row["val_ce_se"] = val.acc, val.ce, val.ce_se
            row["val_count"] = val_count  # what the one_se rule's standard error is of
        test = evaluate(model, data.test, device, amp, keep=rows_c)
        row["test_acc"], row["test_ce"] = test.acc, test.ce
        row["compactness"] = compactness(model, None, y_c, features=test.features)
        row.update(epoch=epoch + 1, lr=lr, epoch_time=time.perf_counter() - t0)
        history.append(row)
        kept = keep_contenders(kept, history, config.select, model)
        if report is not None:
            report(row, {
                "model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "data": data.state_dict(), "rng": torch.get_rng_state(),
                "history": history, "epoch": epoch + 1, "config": config.to_dict(),
                "labels": list(model.labels or []),  # the class names, by class number ([]: unnamed)
                "kept": {e: w for e, w in kept.items() if e != epoch + 1},  # this epoch's weights are "model"
            })
    return FitResult(model, history, selection.handed_over(history, config.select))


def examples(batches: Any) -> int:
    """How many examples one pass over ``batches`` yields."""
    held = getattr(batches, "held", None)
    return len(held) if held is not None else sum(int(y.shape[0]) for _, y in batches)


def _cpu(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}


def keep_contenders(kept: dict[int, dict[str, Tensor]], history: list[dict[str, float]], rule: SelectConfig,
                    model: nn.Module) -> dict[int, dict[str, Tensor]]:
    """The weights a run keeps after its latest epoch (``history[-1]``): those of every epoch ``rule`` may still
    hand over (``selection.contenders``), the latest's copied from ``model`` when it is one of them. Under the
    one_se rule the hand-over depends on the best accuracy still to come, so more than one epoch may be kept;
    under the metric rule, the best so far."""
    epoch = int(history[-1]["epoch"])
    wanted = selection.contenders(history, rule)
    out = {e: w for e, w in kept.items() if e in wanted}
    if epoch in wanted:
        out[epoch] = _cpu(model.state_dict())
    return out


def weights_at(state: dict[str, Any], epoch: int) -> dict[str, Tensor] | None:
    """The weights of ``epoch`` in a run's checkpoint ``state``: its latest epoch's, or one it kept, else None."""
    if int(state["epoch"]) == epoch:
        return state["model"]
    return state.get("kept", {}).get(epoch)


def build_training(config: Config, data_cfg: DataConfig, device: torch.device,
                   channels_last: bool = False) -> tuple[Any, models.Classifier, nn.Module, nn.Module, Any]:
    """The data, model, loss, forward (data-parallel when a process group is set up) and optimizer of a run."""
    paired = losses.matches(config.loss)
    data = data_mod.build(data_cfg, device, config.seed, paired=paired, model_name=config.model.name)
    model = models.build(config.model.name, data.num_classes, data.input_shape, config.model.pretrained,
                         data.normalization, config.model.options).to(device)
    model.labels = data.labels
    if channels_last and len(data.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = losses.build(config.loss, data.num_classes, model.feature_dim,
                           memory=memory_rows(data_cfg, paired)).to(device)
    net = parallel.wrap(model, device, config.train.sync_batchnorm)
    return data, model, loss_fn, net, build_optimizer(config, model, loss_fn)


def step_seconds(config: Config, steps: int = 9, warmup: int = 3) -> float:
    """Measured seconds of one training step of ``config`` on its device (the median of ``steps`` after
    ``warmup`` steps), on a small subset of its data: what a method's trial costs relative to another's."""
    device = resolve_device(config.device)
    rows = (steps + warmup) * 2 * config.data.batch_size  # S1 and S2 of every step
    data_cfg = replace(config.data, subset=min(config.data.subset or rows, rows))
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            if config.train.threads is not None:
                torch.set_num_threads(config.train.threads)
            data, model, loss_fn, net, optimizer = build_training(config, data_cfg, device)
            batches = iter(data.train)
            times = []
            for _ in range(steps + warmup):
                t0 = time.perf_counter()
                train_epoch(model, loss_fn, optimizer, None, [next(batches)], device, False, False)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times[warmup:])


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
