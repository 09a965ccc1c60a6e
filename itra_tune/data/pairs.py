"""The S1/S2 pair: where ITRA's second mini-batch comes from, decided here and nowhere else.

Pairings (``data.pairing``):
- ``independent`` (the paper's, Eq. 3): S2 is drawn from its own, independently shuffled stream over the
  training split and goes through the network with S1, in one forward pass, with gradients. S1 and S2 share
  BatchNorm's batch statistics (one batch of m1 + m2) and both update its running averages.
- ``split`` (not the paper's): one batch of m1 + m2 examples, halved; both halves enter the cross-entropy.
  BatchNorm sees the one batch.
- ``detached`` (not the paper's): S2 is drawn as under ``independent`` but goes through the network in its own
  forward pass without gradient, so the matching gradient reaches the network through S1 alone (the mechanism
  of the paper's Eq. 9: each S1 feature is pulled toward a weighted average of S2 features). S2's pass runs in
  training mode: BatchNorm normalizes it with its own batch statistics and updates the running averages with
  them, as S1's pass does. Costs one forward of S2, no backward.
- ``memory`` (not the paper's): S2 is the detached features and labels of the last ``data.memory_batches`` S1
  batches, kept by the loss in a ring buffer on the device (Cross-Batch Memory, Wang et al., CVPR 2020). No
  extra forward at all, and BatchNorm sees S1 alone. The first step has an empty memory and trains on the
  cross-entropy alone; until the memory holds N batches, S2 is the batches seen so far. With ITRA-c, a memory of
  N batches gives N times the same-class pairs, which matters when classes outnumber the batch.

A loss that matches nothing (ce, lsr, center) gets S1 alone, whatever the pairing says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from itra_tune.config import ConfigError, DataConfig
from itra_tune.data.base import Batch

STREAMED = ("independent", "detached")  # the pairings whose S2 the data draws


@dataclass
class Step:
    """One training step's examples.

    ``x`` is what goes through the network with gradients, in one forward pass: rows ``[0, m1)`` are S1 and
    rows ``[m1, len)`` S2 under ``independent`` and ``split``; the first ``ce_rows`` rows enter the
    cross-entropy: S1 alone (the paper) or S1 and S2 (``split``). Under ``detached``, S2 is ``x2`` and ``y2``,
    to be forwarded without gradient.
    """

    x: Tensor  # (m1 [+ m2], ...) inputs; two token batches are padded to the longer one
    y: Tensor  # labels of every row of x
    m1: int
    ce_rows: int
    x2: Tensor | None = None  # detached: S2's inputs (m2, ...)
    y2: Tensor | None = None  # detached: S2's labels (m2,)

    @property
    def paired(self) -> bool:
        """Whether S2 is in ``x`` (forwarded with gradients)."""
        return self.x.shape[0] > self.m1


class Pairs:
    """One epoch of training Steps: S1 batches from ``first``, S2 from ``second``, from the same batch (split)
    or from the loss's own memory (S1 alone here)."""

    def __init__(self, first: Any, second: Iterator[Batch] | None, pairing: str,
                 join: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.first, self.second, self.pairing, self.join = first, second, pairing, join

    def __len__(self) -> int:
        return len(self.first)

    def __iter__(self) -> Iterator[Step]:
        for x, y in self.first:
            m = x.shape[0]
            if self.second is not None and self.pairing == "detached":
                x2, y2 = next(self.second)
                yield Step(x, y, m1=m, ce_rows=m, x2=x2, y2=y2)
            elif self.second is not None:
                x2, y2 = next(self.second)
                yield Step(self.join(x, x2), torch.cat([y, y2]), m1=m, ce_rows=m)
            elif self.pairing == "split":
                yield Step(x, y, m1=m // 2, ce_rows=m)
            else:
                yield Step(x, y, m1=m, ce_rows=m)


def memory_rows(cfg: DataConfig, paired: bool = True) -> int | None:
    """Rows of S2 the loss keeps under ``memory`` (N batches of m1), or None when the pairing keeps none."""
    return cfg.memory_batches * cfg.batch_size if paired and cfg.pairing == "memory" else None


def build_pairs(cfg: DataConfig, train: Any, gens: dict[str, torch.Generator], paired: bool) -> Pairs:
    """The training Steps of ``train`` under ``cfg.pairing``; ``paired`` is whether the loss wants an S2."""
    m1 = cfg.batch_size
    m2 = cfg.second_batch_size or m1
    pairing = cfg.pairing if paired else "none"
    if pairing in ("split", "memory") and m1 != m2:
        raise ConfigError(f"data.second_batch_size must equal data.batch_size with data.pairing={pairing}")
    if len(train) < (m1 + m2 if pairing == "split" else max(m1, m2)):
        raise ConfigError(f"data.batch_size {m1} exceeds the {len(train)} training examples; lower it")
    first = train.batches(m1 + m2 if pairing == "split" else m1, gens["s1"], cfg.augment, drop_last=True)
    second = train.stream(m2, gens["s2"], cfg.augment) if pairing in STREAMED else None
    return Pairs(first, second, pairing, train.join)


__all__ = ["Pairs", "Step", "build_pairs", "memory_rows"]
