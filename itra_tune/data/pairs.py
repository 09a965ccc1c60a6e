"""The S1/S2 pair: where ITRA's second mini-batch comes from, decided here and nowhere else.

Pairings (``data.pairing``):
- ``independent`` (the paper's, Eq. 3): S2 is drawn from its own, independently shuffled stream over the
  training split and goes through the network with S1, in one forward pass, with gradients.
- ``split`` (not the paper's): one batch of m1 + m2 examples, halved; both halves enter the cross-entropy.

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


@dataclass
class Step:
    """One training step's examples, as the network sees them in one forward pass.

    Rows ``[0, m1)`` of ``x`` are S1 and rows ``[m1, len)`` S2 (none without a second batch); the first
    ``ce_rows`` rows enter the cross-entropy: S1 alone (the paper) or S1 and S2 (``split``).
    """

    x: Tensor  # (m1 + m2, ...) inputs; two token batches are padded to the longer one
    y: Tensor  # (m1 + m2,) labels of every row
    m1: int
    ce_rows: int

    @property
    def paired(self) -> bool:
        return self.x.shape[0] > self.m1


class Pairs:
    """One epoch of training Steps: S1 batches from ``first``, S2 from ``second`` or from the same batch."""

    def __init__(self, first: Any, second: Iterator[Batch] | None, split: bool,
                 join: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.first, self.second, self.split, self.join = first, second, split, join

    def __len__(self) -> int:
        return len(self.first)

    def __iter__(self) -> Iterator[Step]:
        for x, y in self.first:
            m = x.shape[0]
            if self.second is not None:
                x2, y2 = next(self.second)
                yield Step(self.join(x, x2), torch.cat([y, y2]), m1=m, ce_rows=m)
            elif self.split:
                yield Step(x, y, m1=m // 2, ce_rows=m)
            else:
                yield Step(x, y, m1=m, ce_rows=m)


def pairs(cfg: DataConfig, train: Any, gens: dict[str, torch.Generator], paired: bool) -> Pairs:
    """The training Steps of ``train`` under ``cfg.pairing``; ``paired`` is whether the loss wants an S2."""
    m1 = cfg.batch_size
    m2 = cfg.second_batch_size or m1
    split = paired and cfg.pairing == "split"
    if split and m1 != m2:
        raise ConfigError("data.second_batch_size must equal data.batch_size with data.pairing=split")
    if len(train) < (m1 + m2 if split else max(m1, m2)):
        raise ConfigError(f"data.batch_size {m1} exceeds the {len(train)} training examples; lower it")
    first = train.batches(m1 + m2 if split else m1, gens["s1"], cfg.augment, drop_last=True)
    second = train.stream(m2, gens["s2"], cfg.augment) if paired and not split else None
    return Pairs(first, second, split, train.join)


__all__ = ["Pairs", "Step", "pairs"]
