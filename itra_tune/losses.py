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


class FeatureMemory(nn.Module):
    """The detached features and labels of the last ``rows`` S1 examples: a ring buffer on the device.

    Cross-Batch Memory (Wang et al., CVPR 2020): features drift slowly enough for those of earlier iterations to
    stand in for a second batch. Saved with the loss's state, so a resumed run continues with the same memory.
    """

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        if rows < 1 or dim < 1:
            raise ValueError(f"FeatureMemory needs positive rows and dim but got {rows} and {dim}")
        self.register_buffer("h", torch.zeros(rows, dim))  # (N, D), float32 whatever autocast computes in
        self.register_buffer("y", torch.zeros(rows, dtype=torch.long))
        self.rows, self.filled, self.pos = rows, 0, 0  # Python ints: reading them costs no host sync

    def contents(self) -> tuple[Tensor, Tensor]:
        """The features (n, D) and labels (n,) held, n <= rows (fewer only until the buffer first fills)."""
        return self.h[: self.filled], self.y[: self.filled]

    def push(self, h: Tensor, y: Tensor) -> None:
        """Keep a batch (B, D), B <= rows, in place of the oldest rows."""
        b = h.shape[0]
        if b > self.rows:
            raise ValueError(f"a batch of {b} does not fit a memory of {self.rows} rows")
        idx = (self.pos + torch.arange(b, device=self.h.device)) % self.rows
        self.h[idx] = h.detach().float()
        self.y[idx] = y
        self.pos, self.filled = (self.pos + b) % self.rows, min(self.filled + b, self.rows)

    def get_extra_state(self) -> dict[str, int]:
        return {"filled": self.filled, "pos": self.pos}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.filled, self.pos = int(state["filled"]), int(state["pos"])


class ITRA(nn.Module):
    """ITRA, Eq. (4): CE on S1 + lambda * MMD(H1, H2); with ``class_conditional``, ITRA-c, Eq. (6).

    With ``memory`` (rows), S2 is the loss's own memory of past S1 features (``data.pairing: memory``): call it
    without ``h2`` and ``y2``; each call matches S1 against the memory, then adds S1 to it.

    Two departures from the paper, off by default: ``sigma_ema`` smooths the median (or mean) bandwidth over
    steps instead of taking each batch's (1.0 keeps the first batch's), and ``lam_warmup_steps`` ramps lambda
    up from 0. Their state (the smoothed bandwidth, the step count) is saved with the loss's.
    """

    needs_second_batch = True

    def __init__(self, num_classes: int, lam: float, bandwidth: str = "median", sigma: float | None = None,
                 class_conditional: bool = False, memory: int | None = None, feature_dim: int | None = None,
                 sigma_ema: float = 0.0, lam_warmup_steps: int = 0) -> None:
        super().__init__()
        check_lam(lam)
        check_bandwidth(bandwidth, sigma)
        if not 0.0 <= sigma_ema <= 1.0 or lam_warmup_steps < 0:
            raise ConfigError(f"loss.sigma_ema must be in [0, 1] and loss.lam_warmup_steps not negative but got "
                              f"{sigma_ema} and {lam_warmup_steps}")
        # a smoothed bandwidth only replaces a batch statistic: 'fixed' and a given multiscale base stay as set
        self.sigma_ema = sigma_ema if bandwidth != "fixed" and sigma is None else 0.0
        self.lam_warmup_steps, self.steps = lam_warmup_steps, 0
        self.register_buffer("sigma_avg", torch.full((), float("nan")))  # NaN until the first batch
        self.num_classes, self.lam = num_classes, lam
        self.bandwidth, self.sigma, self.class_conditional = bandwidth, sigma, class_conditional
        if memory is not None and feature_dim is None:
            raise ValueError("ITRA with a memory needs feature_dim, the width of the features it keeps")
        self.memory = FeatureMemory(memory, feature_dim) if memory is not None else None

    @classmethod
    def from_config(cls, cfg: LossConfig, num_classes: int, feature_dim: int, memory: int | None = None) -> ITRA:
        return cls(num_classes, cfg.lam, cfg.bandwidth, cfg.sigma, class_conditional=cfg.name == "itra_c",
                   memory=memory, feature_dim=feature_dim, sigma_ema=cfg.sigma_ema,
                   lam_warmup_steps=cfg.lam_warmup_steps)

    def forward(self, logits: Tensor, y: Tensor, h1: Tensor, h2: Tensor | None = None,
                y2: Tensor | None = None, y1: Tensor | None = None) -> Parts:
        ce = F.cross_entropy(logits.float(), y)
        y1 = y if y1 is None else y1
        if self.memory is not None:
            if h2 is not None:
                raise ValueError("ITRA with a memory takes its S2 from the memory; pass no h2")
            h2, y2 = (t.clone() for t in self.memory.contents())  # a snapshot: push() below writes in place
            match = self.match(h1, y1, h2, y2) if h2.shape[0] else ce.new_zeros(())
            self.memory.push(h1, y1)
        elif h2 is None or y2 is None:
            raise ValueError("ITRA needs the second mini-batch's features h2 and labels y2")
        else:
            match = self.match(h1, y1, h2, y2)
        lam = self.lam
        if self.training and self.lam_warmup_steps:
            lam *= min(1.0, (self.steps + 1) / self.lam_warmup_steps)
        if self.training:
            self.steps += 1
        return Parts(ce + lam * match, ce, match, ce.new_zeros(()))

    def match(self, h1: Tensor, y1: Tensor, h2: Tensor, y2: Tensor) -> Tensor:
        """The matching loss: MMD (Eq. 3) or its class-conditional mean (Eq. 5)."""
        scheme, sigma = self.bandwidth, self.sigma
        if self.sigma_ema:
            batch = mmd.batch_bandwidth(h1, h2, scheme)
            if self.training:  # evaluation reads the average, never moves it
                avg = torch.where(torch.isnan(self.sigma_avg), batch,
                                  self.sigma_ema * self.sigma_avg + (1.0 - self.sigma_ema) * batch)
                self.sigma_avg.copy_(avg)
            scheme = "multiscale" if scheme == "multiscale" else "fixed"
            sigma = torch.where(torch.isnan(self.sigma_avg), batch, self.sigma_avg)
        if self.class_conditional:
            return mmd.class_conditional_mmd(h1, y1, h2, y2, self.num_classes, scheme, sigma)
        return mmd.mmd(h1, h2, scheme, sigma)

    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])


class ITRALoss(ITRA):
    """ITRA for your own training loop: cross-entropy on S1 plus lambda times the MMD between the features of S1
    and of a second mini-batch S2; ITRA-c (``class_conditional``, the default) averages the MMD over classes.

        loss_fn = itra_tune.ITRALoss(num_classes=10, lam=0.5)
        parts = loss_fn(logits1, y1, h1, h2, y2)     # parts.total to back-propagate; parts.ce, parts.match
        parts = memory_loss(logits1, y1, h1)          # pairing="memory": S2 is the loss's own memory

    ``pairing`` says what ``h2`` is:

    - ``independent`` (the paper's): features of an independently drawn S2, forwarded with gradients (through
      the network together with S1, so BatchNorm normalizes both with one set of statistics).
    - ``detached``: S2's features without gradient: forward S2 under ``torch.no_grad()`` (saves S2's backward;
      the loss detaches ``h2`` in any case), so the matching gradient reaches the network through S1 alone.
    - ``memory``: pass no ``h2`` or ``y2``. The loss keeps the detached features and labels of the last
      ``memory_batches`` S1 batches (sized at the first call) and matches each S1 against them: no extra forward.
      The first call matches nothing (its match is 0), and the memory fills over ``memory_batches`` calls.
      Move the loss to the model's device (``.to(device)``); its state (``state_dict``) holds the memory.

    ``bandwidth``, ``sigma``, ``sigma_ema`` and ``lam_warmup_steps`` are those of the configuration's ``loss``
    section. Calls in ``eval()`` mode neither move a smoothed bandwidth nor count warm-up steps.
    """

    PAIRINGS = ("independent", "detached", "memory")

    def __init__(self, num_classes: int, lam: float, class_conditional: bool = True, bandwidth: str = "median",
                 sigma: float | None = None, pairing: str = "independent", memory_batches: int = 4,
                 sigma_ema: float = 0.0, lam_warmup_steps: int = 0) -> None:
        super().__init__(num_classes, lam, bandwidth, sigma, class_conditional=class_conditional,
                         sigma_ema=sigma_ema, lam_warmup_steps=lam_warmup_steps)
        if pairing not in self.PAIRINGS:
            raise ConfigError(f"ITRALoss: pairing must be one of {', '.join(self.PAIRINGS)} but got {pairing!r} "
                              f"(for split, pass the two halves of one batch as h1 and h2)")
        if memory_batches < 1:
            raise ConfigError(f"ITRALoss: memory_batches must be at least 1 but got {memory_batches}")
        self.pairing, self.memory_batches = pairing, memory_batches

    def forward(self, logits: Tensor, y: Tensor, h1: Tensor, h2: Tensor | None = None,
                y2: Tensor | None = None, y1: Tensor | None = None) -> Parts:
        if self.pairing == "memory" and self.memory is None:
            self.memory = FeatureMemory(self.memory_batches * h1.shape[0], h1.shape[1]).to(h1.device)
        if self.pairing == "detached" and h2 is not None:
            h2 = h2.detach()
        return super().forward(logits, y, h1, h2, y2, y1)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
        # a memory saved by an earlier run: build it to the saved size before its buffers load
        saved = state_dict.get(prefix + "memory.h")
        if self.pairing == "memory" and self.memory is None and saved is not None:
            self.memory = FeatureMemory(saved.shape[0], saved.shape[1]).to(saved.device)
        super()._load_from_state_dict(state_dict, prefix, *args)


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


def weighted(name: str) -> bool:
    """Whether ``loss.lam`` weighs a term of the loss ``name`` (a matching or center loss; not ce or lsr)."""
    check_name(name)
    return LOSSES[name] is not CrossEntropy


def check_name(name: str) -> None:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)} (loss.name)")


def build(cfg: LossConfig, num_classes: int, feature_dim: int, memory: int | None = None) -> nn.Module:
    """The loss a configuration names, for ``num_classes`` classes and ``feature_dim``-d features.

    ``memory``: rows of past S1 features a matching loss keeps as its S2 (``data.pairs.memory_rows``).
    """
    check_name(cfg.name)
    if memory is not None and LOSSES[cfg.name].needs_second_batch:
        return LOSSES[cfg.name].from_config(cfg, num_classes, feature_dim, memory=memory)
    return LOSSES[cfg.name].from_config(cfg, num_classes, feature_dim)
