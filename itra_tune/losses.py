"""Training objectives: cross-entropy, its two baselines, and ITRA's matching losses.

Every loss is called as ``loss(logits, y, h1, h2, y2, y1=None)`` and returns ``Parts(total, ce, match,
center)``. ``logits`` and ``y`` are what enters the cross-entropy; ``h1`` are the features of S1 and ``y1``
their labels (``y`` itself unless given: they differ only when S2 also enters the cross-entropy, under
``pairing: split``); ``h2`` and ``y2`` are the features and labels of S2. A loss whose class says
``needs_second_batch = False`` ignores ``h2`` and ``y2``.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itra_tune import mmd
from itra_tune.config import FORMS, ConfigError, LossConfig, check_bandwidth, check_lam


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
        """A copy of the features (n, D) and labels (n,) held, n <= rows (fewer only until the buffer first fills):
        ``push`` writes in place."""
        return self.h[: self.filled].clone(), self.y[: self.filled].clone()

    def push(self, h: Tensor, y: Tensor) -> None:
        """Keep a batch (B, D), B <= rows, in place of the oldest rows."""
        b = h.shape[0]
        if b > self.rows:
            raise ValueError(f"a batch of {b} does not fit a memory of {self.rows} rows")
        idx = (self.pos + torch.arange(b, device=self.h.device)) % self.rows
        self.h[idx] = h.detach().float()
        self.y[idx] = y
        self.pos, self.filled = (self.pos + b) % self.rows, min(self.filled + b, self.rows)

    # under torch.compile both run outside its graphs: their Python positions would recompile a graph on every value
    contents_outside, push_outside = torch.compiler.disable(contents), torch.compiler.disable(push)

    def get_extra_state(self) -> dict[str, int]:
        return {"filled": self.filled, "pos": self.pos}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.filled, self.pos = int(state["filled"]), int(state["pos"])


class CollapseError(RuntimeError):
    """The matching loss collapsed the features (``ITRALoss(..., on_collapse="raise")``, or the engine's trial)."""


class CollapseWatch:
    """Notices a feature collapse as it happens, in scale or in direction, while the moving average of CE stays
    above ``chance`` times ln K: in scale when the spread of S1's features (root-mean-square distance between
    them) falls below ``fraction`` of its peak; in direction when their spread relative to their size (the
    root-mean-square norm) does, every example moving to one point however large the features stay; and when
    nine in ten features are dead (0 on every example of the batch, as a ReLU's die).

    Each is kept as a tensor on the features' device; the host reads them every ``every`` steps only.
    """

    def __init__(self, num_classes: int, fraction: float = 0.05, chance: float = 0.9, every: int = 20) -> None:
        self.ln_k = math.log(max(num_classes, 2))
        self.fraction, self.at_chance, self.every = fraction, chance, every
        self.peak: Tensor | None = None  # the largest spread, norm and spread relative to the norm seen (3,)
        self.ce_avg: Tensor | None = None  # CE, exponential moving average over steps (0.9)
        self.steps = 0
        self.reason: str | None = None  # set once a collapse is seen

    def observe_ce(self, ce: Tensor) -> None:
        """Move the average CE (a training step's, before its features are checked)."""
        ce = ce.detach().float()
        self.ce_avg = ce if self.ce_avg is None else 0.9 * self.ce_avg.to(ce.device) + 0.1 * ce

    DEAD = 0.9  # this fraction of the features 0 on every example of a batch, at chance: collapsed
    LEARNED, CHANCE = 0.5, 0.9  # average CE, as a fraction of ln K: learned at or below, at chance at or above

    def chance(self, ce: Tensor) -> Tensor:
        """How near chance the average CE is: 0 when learned, 1 at chance, linear in between (a tensor)."""
        avg = ce.detach().float() if self.ce_avg is None else self.ce_avg.to(ce.device)
        return ((avg / self.ln_k - self.LEARNED) / (self.CHANCE - self.LEARNED)).clamp(0.0, 1.0)

    def update(self, h1: Tensor) -> str | None:
        """Count one training step; returns the reason the first time a collapse is seen, else None."""
        with torch.no_grad():
            z = h1.detach().float()
            spread = mmd.mean_sq_dist(z).sqrt()
            size = z.pow(2).sum(1).mean().sqrt()  # the rows' root-mean-square norm
            rel = spread / size.clamp_min(1e-12)
            now = torch.stack([spread, size, rel])
            self.peak = now if self.peak is None else torch.maximum(self.peak.to(now.device), now)
        self.steps += 1
        if self.reason is not None or self.steps % self.every:
            return None
        dead = (z.abs().amax(0) == 0).float().mean().reshape(1)  # features 0 on every example (a dead ReLU)
        spread, size, rel, peak, peak_size, peak_rel, ce_avg, dead = torch.cat(  # one sync
            [now, self.peak, self.ce_avg.to(now.device).reshape(1), dead]).tolist()
        small, alike, died = spread < self.fraction * peak, rel < self.fraction * peak_rel, dead >= self.DEAD
        if ce_avg <= self.at_chance * self.ln_k or not (small or alike or died):
            return None
        if alike and size >= 0.25 * peak_size:  # as large as ever, and all alike
            self.reason = (f"collapsed in direction: every example's features move to one point (their spread "
                           f"{spread:.3g} is {100 * rel:.2g}% of their size {size:.3g}, {100 * rel / peak_rel:.1f}% "
                           f"of its peak)")
        elif small:
            self.reason = f"collapsed: feature spread {spread:.3g} is {100 * spread / peak:.1f}% of its peak {peak:.3g}"
        else:
            self.reason = f"collapsed: {100 * dead:.0f}% of the features are dead (0 on every example of the batch)"
        self.reason += f" while CE {ce_avg:.3f} stays at chance (ln K = {self.ln_k:.3f}) after {self.steps} steps"
        return self.reason

    def state_dict(self) -> dict[str, float]:
        nan = float("nan")
        peak = [nan] * 3 if self.peak is None else self.peak.tolist()
        return {"peak": peak[0], "peak_size": peak[1], "peak_rel": peak[2],
                "ce_avg": nan if self.ce_avg is None else float(self.ce_avg), "steps": self.steps}

    def load_state_dict(self, state: dict[str, float]) -> None:
        nan = float("nan")
        peak = [state.get(k, nan) for k in ("peak", "peak_size", "peak_rel")]
        if not math.isnan(peak[0]) and math.isnan(peak[1]):  # saved before the direction watch: its size and
            peak[1:] = [0.0, 0.0]  # relative spread take their peaks from the steps to come
        ce_avg = state.get("ce_avg", nan)
        self.peak = None if math.isnan(peak[0]) else torch.tensor(peak)
        self.ce_avg = None if math.isnan(ce_avg) else torch.tensor(ce_avg)
        self.steps = int(state.get("steps", 0))


class ITRA(nn.Module):
    """ITRA, Eq. (4): CE on S1 + lambda * MMD(H1, H2); with ``class_conditional``, ITRA-c, Eq. (6).

    ``form`` says what the gradient sees; the value is the paper's in every form. ``paper``: the batch's bandwidth
    detached, the paper's exact form, under which shrinking every feature together always lowers the loss: it
    collapses models whose features no normalization holds (docs/results/collapse.md). ``scale_invariant``: the
    features' common scale taken out of the gradient (``mmd.detach_scale``), so shrinking them gains nothing.
    ``guarded``: scale-invariant while the classifier is at chance (average CE at 0.9 ln K or above) and the
    paper's once it has learned (at half of ln K or below), blended in between. ``gated`` (the default):
    ``guarded``, with lambda itself scaled by the same measure of CE's progress, from 0 at chance to its full value
    once learned: while CE cannot yet hold the features apart, nothing pulls them together (a LayerNorm'd
    transformer or an AdamW-trained CNN otherwise collapses, every example to one point). Every form watches for
    a collapse while training (``collapse``: None, or the reason with its numbers).

    With ``memory`` (rows), S2 is the loss's own memory of past S1 features (``data.pairing: memory``): call it
    without ``h2`` and ``y2``; each call matches S1 against the memory, then adds S1 to it.

    Two departures from the paper, off by default: ``sigma_ema`` smooths the median (or mean) bandwidth over
    steps instead of taking each batch's (1.0 keeps the first batch's), and ``lam_warmup_steps`` ramps lambda
    up from 0. Their state (the smoothed bandwidth, the step count) is saved with the loss's.

    ``gather``: None, or a function that concatenates a tensor from every data-parallel rank with its gradient
    (``ITRACallback(gather=True)`` sets it). With it the loss matches the global batches' features and its gate
    reads the global CE, so N ranks of m examples match as one process of N·m; the CE stays this rank's.
    """

    needs_second_batch = True

    def __init__(self, num_classes: int, lam: float, bandwidth: str = "median", sigma: float | None = None,
                 class_conditional: bool = False, memory: int | None = None, feature_dim: int | None = None,
                 sigma_ema: float = 0.0, lam_warmup_steps: int = 0, form: str = "gated") -> None:
        super().__init__()
        check_lam(lam)
        check_bandwidth(bandwidth, sigma)
        if not 0.0 <= sigma_ema <= 1.0 or lam_warmup_steps < 0:
            raise ConfigError(f"loss.sigma_ema must be in [0, 1] and loss.lam_warmup_steps not negative but got "
                              f"{sigma_ema} and {lam_warmup_steps}")
        if form not in FORMS:
            raise ConfigError(f"loss.form: unknown form {form!r}; choose one of {', '.join(FORMS)}")
        # a smoothed bandwidth only replaces a batch statistic: 'fixed' and a given multiscale base stay as set
        self.sigma_ema = sigma_ema if bandwidth != "fixed" and sigma is None else 0.0
        self.lam_warmup_steps, self.steps = lam_warmup_steps, 0
        self.last: dict[str, Tensor] = {}  # the last training step's CE, matching loss and lambda, for a logger
        self._lam_total: float | Tensor = 0.0  # the lambda applied (gate and warm-up included), summed over steps
        self._lam_steps = 0
        self.register_buffer("sigma_avg", torch.full((), float("nan")))  # NaN until the first batch
        self.num_classes, self.lam, self.form = num_classes, lam, form
        self.bandwidth, self.sigma, self.class_conditional = bandwidth, sigma, class_conditional
        if memory is not None and feature_dim is None:
            raise ValueError("ITRA with a memory needs feature_dim, the width of the features it keeps")
        self.memory = FeatureMemory(memory, feature_dim) if memory is not None else None
        self.watch = CollapseWatch(num_classes)
        self.gather: Callable[[Tensor], Tensor] | None = None

    @property
    def collapse(self) -> str | None:
        """None, or why the features are seen to have collapsed (with the numbers)."""
        return self.watch.reason

    @classmethod
    def from_config(cls, cfg: LossConfig, num_classes: int, feature_dim: int, memory: int | None = None) -> ITRA:
        return cls(num_classes, cfg.lam, cfg.bandwidth, cfg.sigma, class_conditional=cfg.name == "itra_c",
                   memory=memory, feature_dim=feature_dim, sigma_ema=cfg.sigma_ema,
                   lam_warmup_steps=cfg.lam_warmup_steps, form=cfg.form)

    def forward(self, logits: Tensor, y: Tensor, h1: Tensor, h2: Tensor | None = None,
                y2: Tensor | None = None, y1: Tensor | None = None) -> Parts:
        ce = F.cross_entropy(logits.float(), y)
        if self.lam == 0 and h2 is None and self.memory is None:  # nothing to match: the engine draws no S2 at
            self.steps += int(self.training)  # lambda 0 (``matches``); given an S2, the term is computed and logged
            zero = ce.new_zeros(())
            return Parts(ce, ce, zero, zero)
        y1 = y if y1 is None else y1
        seen = ce  # the CE the gate and the watch read: the global batch's when the features are gathered
        if self.gather is not None:
            h1, y1, seen = self.gather(h1), self.gather(y1), self.gather(ce.detach().reshape(1)).mean()
            if h2 is not None and y2 is not None:
                h2, y2 = self.gather(h2), self.gather(y2)
        compiling = torch.compiler.is_compiling()
        warm = 1.0 if not self.training else self._observe_outside(seen, True) if compiling else self._observe(seen)
        chance = self.watch.chance(seen)
        weight = chance if self.form in ("guarded", "gated") else float(self.form == "scale_invariant")
        if self.memory is not None:
            if h2 is not None:
                raise ValueError("ITRA with a memory takes its S2 from the memory; pass no h2")
            memory = self.memory
            h2, y2 = memory.contents_outside() if compiling else memory.contents()  # a copy: push() writes in place
            match = self.match(h1, y1, h2, y2, weight) if h2.shape[0] else ce.new_zeros(())
            (memory.push_outside if compiling else memory.push)(h1, y1)
        elif h2 is None or y2 is None:
            raise ValueError("ITRA needs the second mini-batch's features h2 and labels y2")
        else:
            match = self.match(h1, y1, h2, y2, weight)
        lam = (self.lam * (1.0 - chance) if self.form == "gated" else self.lam) * warm
        if self.training:
            (self._count_outside if compiling else self._count)(ce, match, lam, h1)
        return Parts(ce + lam * match, ce, match, ce.new_zeros(()))

    # The step's bookkeeping (counters, the watch's host reads every few steps) runs outside torch.compile's
    # graphs: a Python counter traced in would recompile the step every step. The loss's arithmetic, the matching
    # loss included, compiles as one graph between the two. Eager calls skip the disabling wrapper (its cost is a
    # tenth of a small model's step).

    def _observe(self, ce: Tensor, compiled: bool = False) -> float | Tensor:
        """Move the watch's average CE; lambda's warm-up factor for this step (1.0 without warm-up; a tensor under
        torch.compile, which would recompile on every float)."""
        self.watch.observe_ce(ce)
        if not self.lam_warmup_steps:
            return 1.0
        warm = min(1.0, (self.steps + 1) / self.lam_warmup_steps)
        return torch.tensor(warm, device=ce.device) if compiled else warm

    def _count(self, ce: Tensor, match: Tensor, lam: float | Tensor, h1: Tensor) -> None:
        self.steps += 1
        self.last = {"ce": ce.detach(), "match": match.detach(), "lam": torch.as_tensor(lam).detach()}
        self._lam_total = self._lam_total + (lam.detach() if isinstance(lam, Tensor) else lam)
        self._lam_steps += 1
        if self.lam > 0 and self.watch.update(h1) is not None:
            self.on_collapse(self.watch.reason)

    _observe_outside, _count_outside = torch.compiler.disable(_observe), torch.compiler.disable(_count)

    def applied_lam(self) -> float | None:
        """The mean lambda the matching loss was weighted by over the training steps since the last call (under
        ``gated``, 0 while CE is at chance, ``lam`` once learned); None when no step matched. Read once an epoch:
        it waits for the device."""
        if not self._lam_steps:
            return None
        mean = float(self._lam_total) / self._lam_steps
        self._lam_total, self._lam_steps = 0.0, 0
        return mean

    def on_collapse(self, reason: str) -> None:
        """Called once, when the watch first sees a collapse (the engine reads ``collapse`` after the epoch)."""

    def match(self, h1: Tensor, y1: Tensor, h2: Tensor, y2: Tensor, scale_weight: float | Tensor = 0.0) -> Tensor:
        """The matching loss: MMD (Eq. 3) or its class-conditional mean (Eq. 5), with the features' common scale
        taken out of its gradient by ``scale_weight`` (0: the paper's gradient; 1: scale-invariant)."""
        if not isinstance(scale_weight, float) or scale_weight > 0:
            h1, h2 = mmd.detach_scale(h1, h2, scale_weight)
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

    def get_extra_state(self) -> dict[str, float]:
        return {"steps": self.steps, **{f"watch.{k}": v for k, v in self.watch.state_dict().items()}}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.steps = int(state["steps"])
        self.watch.load_state_dict({k[len("watch."):]: v for k, v in state.items() if k.startswith("watch.")})


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

    ``form``: ``gated`` (the default) holds the matching loss back while CE is at chance, letting it in as CE
    learns, with the features' scale kept out of its gradient until then; ``guarded`` only keeps the scale out;
    ``scale_invariant`` keeps it out always; ``paper`` is the paper's exact form (bandwidth detached), which
    collapses models without normalization before the features. If the features do collapse while CE stays at
    chance (their spread falls to 5% of its peak, or to 5% of its peak relative to their size: every example at
    one point), ``collapse`` says why and the loss warns once, at the line of your code that called it, naming
    the remedy; with ``on_collapse="raise"`` it raises ``CollapseError`` there instead.

    ``bandwidth``, ``sigma``, ``sigma_ema``, ``lam_warmup_steps`` and ``form`` are those of the configuration's
    ``loss`` section. Calls in ``eval()`` mode neither move a smoothed bandwidth nor count warm-up steps.
    """

    PAIRINGS = ("independent", "detached", "memory")

    def __init__(self, num_classes: int, lam: float, class_conditional: bool = True, bandwidth: str = "median",
                 sigma: float | None = None, pairing: str = "independent", memory_batches: int = 4,
                 sigma_ema: float = 0.0, lam_warmup_steps: int = 0, form: str = "gated",
                 on_collapse: str = "warn") -> None:
        super().__init__(num_classes, lam, bandwidth, sigma, class_conditional=class_conditional,
                         sigma_ema=sigma_ema, lam_warmup_steps=lam_warmup_steps, form=form)
        if on_collapse not in ("warn", "raise"):
            raise ConfigError(f"ITRALoss: on_collapse must be 'warn' or 'raise' but got {on_collapse!r}")
        self.raise_on_collapse = on_collapse == "raise"
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

    def on_collapse(self, reason: str) -> None:
        fix = ("use form='gated' (the default), which does not collapse this way" if self.form != "gated"
               else "lower lam or the learning rate")
        message = f"ITRALoss: the features {reason}; the model is learning nothing: {fix}"
        if self.raise_on_collapse:
            raise CollapseError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=_callers_level())

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
        # a memory saved by an earlier run: build it to the saved size before its buffers load
        saved = state_dict.get(prefix + "memory.h")
        if self.pairing == "memory" and self.memory is None and saved is not None:
            self.memory = FeatureMemory(saved.shape[0], saved.shape[1]).to(saved.device)
        super()._load_from_state_dict(state_dict, prefix, *args)


_SKIPPED = (str(Path(__file__).parent) + "/", str(Path(torch.__file__).parent) + "/")  # itra_tune's and torch's


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside itra_tune and torch (a module's ``__call__``, compile's
    wrappers): the user's line that called the loss (``warnings.warn``'s ``skip_file_prefixes`` is Python
    3.12's)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame, level = frame.f_back, level + 1
    return level


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


def matches(cfg: LossConfig) -> bool:
    """Whether a loss configuration matches S1 against an S2: a matching loss with lambda above 0. At lambda 0 a
    matching loss is cross-entropy, and trains as ``ce`` does: no S2 is drawn, forwarded or matched."""
    return needs_second_batch(cfg.name) and cfg.lam > 0


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
