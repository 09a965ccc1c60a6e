"""ITRA in the Hugging Face ``Trainer``: ``itra_tune.ITRATrainer`` adds lambda times the matching loss to the
model's cross-entropy.

    trainer = itra_tune.ITRATrainer(model=model, args=TrainingArguments(...), train_dataset=train,
                                    data_collator=collator, lam=0.1, pairing="memory")
    trainer.train()          # logs 'loss' as usual, and 'match_loss' beside it

Imported on first use of ``itra_tune.ITRATrainer``: only then is transformers loaded.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from itra_tune.dropin import SecondBatch, WithFeatures
from itra_tune.losses import ITRALoss

ITRA_ARGS = ("lam", "pairing", "bandwidth", "form")  # what hyperparameter_search may set beside TrainingArguments' own
STATE_FILE = "itra_state.pt"  # in each Trainer checkpoint: the loss's state (memory, watch) and S2's position


class ITRATrainer(Trainer):
    """``transformers.Trainer`` whose training loss is CE on S1 + lambda * MMD(S1, S2) at the classifier's input.

    S2 is drawn by ``SecondBatch`` from the training set (seeded with ``args.seed + 1``, collated by the
    Trainer's collator, ``second_batch_size`` or the per-device batch size) under the pairings ``independent``
    (S2 forwarded with gradients, the paper's) and ``detached`` (without); ``memory`` matches each batch against
    the features of the last ``memory_batches`` batches and draws no S2. Evaluation loss is the plain CE.

    ``form`` is ``ITRALoss``'s: ``gated`` (the default), ``guarded``, ``scale_invariant``, or ``paper``, the
    paper's exact form, which can collapse an encoder's features (the loss warns when it sees that happen).

    ``lam``, ``pairing``, ``bandwidth`` and ``form`` can be searched with ``trainer.hyperparameter_search``: put
    them in the ``hp_space`` beside TrainingArguments' fields. Works with single-label classification models
    whose output has ``logits``; the features are the input of the model's head (``itra_tune.split_model``).
    """

    loss_is_scaled_for_ga = False  # the loss is a per-batch mean: the Trainer divides it for accumulation

    def __init__(self, *args: Any, lam: float = 0.1, pairing: str = "independent", class_conditional: bool = True,
                 bandwidth: str = "median", sigma: float | None = None, memory_batches: int = 4,
                 second_batch_size: int | None = None, head: nn.Module | None = None,
                 form: str = "gated", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lam, self.pairing, self.bandwidth, self.form = lam, pairing, bandwidth, form
        self.class_conditional, self.sigma, self.memory_batches = class_conditional, sigma, memory_batches
        self.second_batch_size, self.head = second_batch_size, head
        self.itra = self._build_loss()  # checks the arguments now; rebuilt when a search sets them
        self._net: WithFeatures | None = None
        self._second: SecondBatch | None = None
        self._second_state: dict[str, int] | None = None  # S2's position from a checkpoint, for when S2 is built
        self._match_sum: Tensor | float = 0.0  # summed on the device: no host sync per step
        self._match_steps = 0

    def _build_loss(self) -> ITRALoss:
        num_classes = getattr(getattr(self.model, "config", None), "num_labels", None)
        if num_classes is None:
            raise ValueError("ITRATrainer needs a classification model whose config has num_labels")
        return ITRALoss(num_classes, float(self.lam), self.class_conditional, self.bandwidth, self.sigma,
                        self.pairing, self.memory_batches, form=self.form)

    def _hp_search_setup(self, trial: Any) -> None:
        own = {}
        if isinstance(trial, dict):  # ray and wandb pass the sampled values; optuna a trial (see hp_space)
            own = {k: trial[k] for k in ITRA_ARGS if k in trial}
            trial = {k: v for k, v in trial.items() if k not in ITRA_ARGS}
        elif trial is not None and self.hp_space is not None:
            own = {k: v for k, v in self.hp_space(trial).items() if k in ITRA_ARGS}
        super()._hp_search_setup(trial)
        if own:
            for k, v in own.items():
                setattr(self, k, v)
            self.itra, self._net, self._second = self._build_loss(), None, None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Tensor | tuple[Tensor, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        if not model.training:
            out = model(**inputs)
            loss = F.cross_entropy(out.logits.float(), labels)
            return (loss, out) if return_outputs else loss
        net = self._features(model)
        out, h1 = net(**inputs)
        loss_fn = self.itra.to(h1.device)
        if self.pairing == "memory":
            parts = loss_fn(out.logits, labels, h1)
        else:
            s2 = self._prepare_inputs(next(self._second_batches()))
            y2 = s2.pop("labels")
            with torch.no_grad() if self.pairing == "detached" else contextlib.nullcontext():
                _, h2 = net(**s2)
            parts = loss_fn(out.logits, labels, h1, h2, y2)
        self._match_sum = self._match_sum + parts.match.detach()
        self._match_steps += 1
        return (parts.total, out) if return_outputs else parts.total

    def _features(self, model: nn.Module) -> WithFeatures:
        inner = self.accelerator.unwrap_model(model)
        if self._net is None or self._net.model is not inner:
            if self._net is not None:
                self._net.remove()
            self._net = WithFeatures(inner, self.head)
        return self._net

    def _second_batches(self) -> SecondBatch:
        if self._second is None:
            dataset = self.train_dataset
            if hasattr(dataset, "column_names"):  # a datasets.Dataset: the same columns the Trainer keeps
                dataset = self._remove_unused_columns(dataset, description="training")
            collate = self._get_collator_with_removed_columns(self.data_collator, description="training")
            size = self.second_batch_size or self.args.per_device_train_batch_size
            self._second = SecondBatch(dataset, size, seed=self.args.seed + 1, collate_fn=collate)
            if self._second_state is not None:
                self._second.load_state_dict(self._second_state)
        return self._second

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, plus the loss's state and S2's position: a resumed run continues exactly."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            second = self._second.state_dict() if self._second is not None else self._second_state
            torch.save({"loss": self.itra.state_dict(), "second": second}, folder / STATE_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / STATE_FILE
        if path.exists():  # a checkpoint of the plain Trainer has none: the loss starts fresh
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.itra.load_state_dict(state["loss"])
            self._second, self._second_state = None, state["second"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with the mean matching loss (before lambda) since the last one beside ``loss``."""
        if "loss" in logs and self._match_steps:
            logs["match_loss"] = round(float(self._match_sum) / self._match_steps, 6)
            self._match_sum, self._match_steps = 0.0, 0
        super().log(logs, start_time)
