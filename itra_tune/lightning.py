"""ITRA in a Lightning ``Trainer``: one callback draws S2 for your ``LightningModule``.

    itra = itra_tune.ITRACallback(train_set, batch_size=64, seed=1)
    trainer = L.Trainer(callbacks=[itra], ...)

    def training_step(self, batch, batch_idx):           # in your LightningModule
        (x, y), (x2, y2) = batch, self.s2                 # S2: this rank's own, on the module's device
        logits, h1 = self.net(x)                          # self.net = itra_tune.split_model(model)
        _, h2 = self.net(x2)
        return self.itra_loss(logits, y, h1, h2, y2).total  # self.itra_loss = itra_tune.ITRALoss(...)

What the callback does: before every training step it draws the next S2 from a ``SecondBatch`` of its own
(every DDP rank its own stream, reproducible from ``seed``) and moves it to the device through the module's own
batch-transfer hooks; under DDP every ``ITRALoss`` of the module matches the features of all ranks' batches,
gathered with their gradients, as the search's data-parallel trials do (``gather=False``: each rank its own);
after it, it logs the parts of every ``ITRALoss`` in the module (``itra/ce``,
``itra/match``, ``itra/lam``); S2's position goes into Lightning's checkpoints (the loss's own state is in the
module's ``state_dict``), so ``fit(ckpt_path=...)`` continues the same S2 sequence; and when a loss sees its
features collapse, training stops on every rank with the reason (``itra.collapse``), or raises
``CollapseError`` with ``on_collapse="raise"``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset

from itra_tune import parallel
from itra_tune.dropin import SecondBatch
from itra_tune.losses import ITRA, CollapseError


class ITRACallback(pl.Callback):
    """S2 for a ``LightningModule``, per rank and on its device, in its checkpoints; a collapse stops training.

    Args:
        dataset: the training set S2 is drawn from (map-style; a dataset of dicts gives dict batches).
        batch_size: m2, examples per S2.
        seed: S2's stream; pick one other than your loader's.
        attr: the module attribute S2 is put in before each training step.
        gather: under DDP, match the features of every rank's S1 and S2 (gathered with their gradients; the gate
            reads the global CE), so N ranks of m examples match as one process of N·m, as the search's
            data-parallel trials do. ``False``: each rank matches its own m (no collective; a small per-rank batch
            gives ITRA-c few same-class pairs). Every rank's batches must then be the same size, as Lightning's
            ``DistributedSampler`` makes them.
        on_collapse: ``stop`` (end training on every rank, the reason in ``collapse``) or ``raise``.
        loader_kwargs: for ``SecondBatch``'s DataLoader (``collate_fn``, ``num_workers``, ...).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 1, attr: str = "s2",
                 on_collapse: str = "stop", gather: bool = True, **loader_kwargs: Any) -> None:
        if on_collapse not in ("stop", "raise"):
            raise ValueError(f"ITRACallback: on_collapse must be 'stop' or 'raise' but got {on_collapse!r}")
        self.dataset, self.batch_size, self.seed, self.attr = dataset, batch_size, seed, attr
        self.gather = gather
        self.on_collapse, self.loader_kwargs = on_collapse, loader_kwargs
        self.second: SecondBatch | None = None
        self._restored: dict[str, int] | None = None
        self.collapse: str | None = None  # why training stopped, when a loss saw its features collapse

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for loss in pl_module.modules():
            if isinstance(loss, ITRA):
                loss.gather = parallel.gather if self.gather and trainer.world_size > 1 else None
        if stage == "fit" and self.second is None:
            self.second = SecondBatch(self.dataset, self.batch_size, seed=self.seed, rank=trainer.global_rank,
                                      **self.loader_kwargs)
            if self._restored is not None:
                self.second.load_state_dict(self._restored)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        assert self.second is not None, "ITRACallback.setup did not run"
        setattr(pl_module, self.attr, trainer.strategy.batch_to_device(next(self.second)))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        found = [m for m in pl_module.modules() if isinstance(m, ITRA)]
        for i, loss in enumerate(found):
            name = "itra" if len(found) == 1 else f"itra{i}"
            pl_module.log_dict({f"{name}/{k}": v.float() for k, v in loss.last.items()}, on_step=True,
                               on_epoch=False, batch_size=self.batch_size)
        watch = next((loss.watch for loss in found if loss.watch.steps), None)
        if watch is not None and watch.steps % watch.every == 0:  # the watch decides on these steps only (the
            reason = next((loss.collapse for loss in found if loss.collapse), None)  # same on every rank): one
            if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):  # collective per check
                self._stop(trainer, reason or "collapsed on another rank")

    def _stop(self, trainer: pl.Trainer, reason: str) -> None:
        self.collapse = f"ITRA: the features {reason}; training stopped (try a lower lambda or learning rate)"
        if self.on_collapse == "raise":
            raise CollapseError(self.collapse)
        trainer.should_stop = True
        rank_zero_warn(self.collapse)

    def state_dict(self) -> dict[str, Any]:
        return {"second": self.second.state_dict() if self.second is not None else self._restored,
                "collapse": self.collapse}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored, self.collapse = state_dict.get("second"), state_dict.get("collapse")
        if self.second is not None and self._restored is not None:
            self.second.load_state_dict(self._restored)


__all__ = ["ITRACallback"]
