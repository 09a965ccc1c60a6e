"""Training objectives: cross-entropy, its two baselines, and ITRA's matching losses.

Every loss is called as ``loss(logits, y, h1, h2, y2, y1=None)`` and returns ``Parts(total, ce, match,
center)``. ``logits`` and ``y`` are what enters the cross-entropy; ``h1`` are the features of S1 and ``y1``
their labels (``y`` itself unless given: they differ only when S2 also enters the cross-entropy, under
``pairing: split``); ``h2`` and ``y2`` are the features and labels of S2. A loss whose class says
``needs_second_batch = False`` ignores ``h2`` and ``y2``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itra_tune import mmd
from itra_tune.config import ConfigError, LossConfig, check_bandwidth, check_lam


class Parts(NamedTuple):
    total: Tensor  # what is back-propagated
    ce: Tensor  # cross-entropy on the labelled batch (Eq. 2)
    match: Tensor  # the matching loss, before lambda (Eq. 3 or 5); 0 for the baselines
    center: Tensor  # the center loss, before lambda; 0 unless 'center'


class CrossEntropy(nn.Module):
    """Plain cross-entropy, optionally with label smoothing (LSR, Szegedy et al. 2016)."""

    needs_second_batch = False

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= eps < 1.0:
            raise ConfigError(f"loss.eps must be in [0, 1) but got {eps}")
        self.eps = eps

    @classmethod
    def from_config(cls, cfg: LossConfig, num_classes: int, feature_dim: int) -> CrossEntropy:
        return cls(eps=cfg.eps if cfg.name == "lsr" else 0.0)

    def forward(self, logits: Tensor, y: Tensor, h1: Tensor, h2: Tensor | None = None,
                y2: Tensor | None = None, y1: Tensor | None = None) -> Parts:
        ce = F.cross_entropy(logits.float(), y, label_smoothing=self.eps)
        zero = ce.new_zeros(())
        return Parts(ce, ce, zero, zero)


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): CE + lambda * 1/2 ||h - c_y||^2, with learnable class centers.

    The features are pulled toward detached centers with weight lambda; the centers move toward the
    features through a separate term of weight 1, so their step size is ``center_lr`` (their own
    optimizer group) whatever lambda is, as in the paper's update rule.
    """

    needs_second_batch = False

    def __init__(self, num_classes: int, feature_dim: int, lam: float) -> None:
        super().__init__()
        check_lam(lam)
        self.lam = lam
        self.centers = nn.Parameter(torch.zeros(num_classes, feature_dim))  # (K, D)

    @classmethod
    def from_config(cls, cfg: LossConfig, num_classes: int, feature_dim: int) -> CenterLoss:
        return cls(num_classes, feature_dim, cfg.lam)

    def forward(self, logits: Tensor, y: Tensor, h1: Tensor, h2: Tensor | None = None,
                y2: Tensor | None = None, y1: Tensor | None = None) -> Parts:
        ce = F.cross_entropy(logits.float(), y)
        h = h1.float()
        c = self.centers[y if y1 is None else y1]  # (B, D)
        pull = 0.5 * (h - c.detach()).pow(2).sum(1).mean()
        follow = 0.5 * (h.detach() - c).pow(2).sum(1).mean()
        return Parts(ce + self.lam * pull + follow, ce, ce.new_zeros(()), pull.detach())


class ITRA(nn.Module):
    """ITRA, Eq. (4): CE on S1 + lambda * MMD(H1, H2); with ``class_conditional``, ITRA-c, Eq. (6)."""

    needs_second_batch = True

    def __init__(self, num_classes: int, lam: float, bandwidth: str = "median", sigma: float | None = None,
                 class_conditional: bool = False) -> None:
        super().__init__()
        check_lam(lam)
        check_bandwidth(bandwidth, sigma)
        self.num_classes, self.lam = num_classes, lam
        self.bandwidth, self.sigma, self.class_conditional = bandwidth, sigma, class_conditional

    @classmethod
    def from_config(cls, cfg: LossConfig, num_classes: int, feature_dim: int) -> ITRA:
        return cls(num_classes, cfg.lam, cfg.bandwidth, cfg.sigma, class_conditional=cfg.name == "itra_c")

    def forward(self, logits: Tensor, y: Tensor, h1: Tensor, h2: Tensor | None = None,
                y2: Tensor | None = None, y1: Tensor | None = None) -> Parts:
        if h2 is None or y2 is None:
            raise ValueError("ITRA needs the second mini-batch's features h2 and labels y2")
        ce = F.cross_entropy(logits.float(), y)
        if self.class_conditional:
            y1 = y if y1 is None else y1
            match = mmd.class_conditional_mmd(h1, y1, h2, y2, self.num_classes, self.bandwidth, self.sigma)
        else:
            match = mmd.mmd(h1, h2, self.bandwidth, self.sigma)
        return Parts(ce + self.lam * match, ce, match, ce.new_zeros(()))


LOSSES: dict[str, type[nn.Module]] = {  # name -> class; each has from_config(cfg, num_classes, feature_dim)
    "ce": CrossEntropy,
    "lsr": CrossEntropy,
    "center": CenterLoss,
    "itra": ITRA,
    "itra_c": ITRA,
}


def needs_second_batch(name: str) -> bool:
    """Whether the loss ``name`` matches S1 against a second mini-batch S2 (its class says so)."""
    check_name(name)
    return LOSSES[name].needs_second_batch


def check_name(name: str) -> None:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)} (loss.name)")


def build(cfg: LossConfig, num_classes: int, feature_dim: int) -> nn.Module:
    """The loss a configuration names, for ``num_classes`` classes and ``feature_dim``-d features."""
    check_name(cfg.name)
    return LOSSES[cfg.name].from_config(cfg, num_classes, feature_dim)
