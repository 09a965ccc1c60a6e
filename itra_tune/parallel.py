"""Data-parallel training: what the engine does differently when it is one of several workers.

The engine runs unchanged in every worker of a process group (Ray Train's ``TorchTrainer`` inside a search
trial, or ``torchrun``): the model in ``DistributedDataParallel``, each worker on its own rows of every global
batch, and the matching loss on the global batches, whose features are gathered from every worker with their
gradients. N workers of m examples therefore match S1 and S2 of N·m examples, as one worker of N·m would, and
ITRA-c gets N times the same-class pairs. Without a process group (one worker) every function here is the
identity.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from itra_tune.data.pairs import Step

# torch 2.14 marks the autograd all-gather deprecated in favour of a private module; it is the public one
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")


def world() -> int:
    """Workers in the process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def gather(x: Tensor, grad: bool = True) -> Tensor:
    """Every worker's ``x`` (same shape on each), concatenated in rank order. With ``grad`` the gradient of each
    worker's slice flows back to it (``torch.distributed.nn``: summed over the workers that used it)."""
    if world() == 1:
        return x
    if grad and x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x))
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the workers (in place on a copy)."""
    if world() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world()


def average_gradients(params: Any) -> None:
    """Average the gradients of parameters outside DistributedDataParallel (a loss's class centers)."""
    if world() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world()


class FeaturesAndLogits(nn.Module):
    """The forward pass DistributedDataParallel wraps: features of every row, logits of the first ``ce_rows``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, ce_rows: int) -> tuple[Tensor, Tensor]:
        h = self.model.features(x)
        return h, self.model.head(h[:ce_rows])


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module | None:
    """The model's data-parallel forward (``FeaturesAndLogits`` in DistributedDataParallel), or None for one
    worker. ``sync_batchnorm`` normalizes with the global batch's statistics (``nn.SyncBatchNorm``), in place."""
    if world() == 1:
        return None
    if sync_batchnorm:
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    ids = [device.index or 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(FeaturesAndLogits(model), device_ids=ids)


def shard(step: Step, r: int, n: int) -> Step:
    """Worker ``r`` of ``n``'s rows of a global Step: its slice of S1, of S2 and of the cross-entropy rows."""
    if n == 1:
        return step

    def part(t: Tensor, start: int, rows: int) -> Tensor:
        size = rows // n
        return t[start + r * size: start + (r + 1) * size]

    m1, ce = step.m1, step.ce_rows
    if step.x2 is not None:  # detached: S2 apart
        return Step(part(step.x, 0, m1), part(step.y, 0, m1), m1 // n, ce // n, part(step.x2, 0, len(step.x2)),
                    part(step.y2, 0, len(step.y2)))
    if not step.paired:
        return Step(part(step.x, 0, m1), part(step.y, 0, m1), m1 // n, ce // n)
    rest = step.x.shape[0] - m1
    x = torch.cat([part(step.x, 0, m1), part(step.x, m1, rest)])
    y = torch.cat([part(step.y, 0, m1), part(step.y, m1, rest)])
    return Step(x, y, m1 // n, m1 // n + (ce - m1) // n)


class Sharded:
    """The training Steps of a global epoch, each cut to this worker's rows."""

    def __init__(self, steps: Any, r: int, n: int) -> None:
        self.steps, self.r, self.n = steps, r, n

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return (shard(s, self.r, self.n) for s in self.steps)
