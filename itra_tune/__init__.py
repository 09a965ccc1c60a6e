"""itra_tune: In-Training Representation Alignment (ITRA), tuned with Ray Tune and tracked with MLflow.

    cfg = itra_tune.load_config("my.yaml")
    result = itra_tune.train(cfg)          # the engine, no cluster needed
    result.best["val_acc"]
    cfg = itra_tune.best_config("cifar100")   # the winner of the newest search, from MLflow

    loss_fn = itra_tune.ITRALoss(num_classes=10, lam=0.5)   # ITRA in your own loop, with
    net = itra_tune.split_model(model)                       # SecondBatch; or itra_tune.ITRATrainer (Hugging
                                                             # Face), itra_tune.ITRACallback (Lightning)

Attributes load on first use, so ``import itra_tune`` stays cheap. The core install trains; the search and
the text models come with extras (``pip install "itra_tune[search]"``, ``[text]``, ``[all]``: ``itra_tune.extras``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "train": ("itra_tune.production", "train"),  # also itra_tune.train.over_seeds(config, n)
    "best_config": ("itra_tune.best", "best_config"),
    "best_answer": ("itra_tune.best", "best_answer"),  # best_config with mean ± std over seeds, and the tied
    "load_best_model": ("itra_tune.best", "load_best_model"),
    "load_exported": ("itra_tune.export", "load"),
    "fit": ("itra_tune.engine", "fit"),
    "load_config": ("itra_tune.config", "load"),
    "Config": ("itra_tune.config", "Config"),
    "ConfigError": ("itra_tune.config", "ConfigError"),
    # ITRA in your own training (README, "Your own training")
    "ITRALoss": ("itra_tune.losses", "ITRALoss"),
    "CollapseError": ("itra_tune.losses", "CollapseError"),  # ITRALoss(..., on_collapse="raise")
    "SecondBatch": ("itra_tune.dropin", "SecondBatch"),
    "split_model": ("itra_tune.dropin", "split_model"),
    "pad_collate": ("itra_tune.dropin", "pad_collate"),  # token dicts of different lengths, padded per batch
    "join_batches": ("itra_tune.dropin", "join_batches"),  # S1 and S2 as one padded batch
    "ITRATrainer": ("itra_tune.trainer", "ITRATrainer"),  # loads transformers
    "ITRACallback": ("itra_tune.lightning", "ITRACallback"),  # loads lightning
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'itra_tune' has no attribute {name!r}")
    module, attr = _LAZY[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:  # an optional part whose extra is not installed: say which extra
        raise (importlib.import_module("itra_tune.extras").missing(e, f"itra_tune.{name}") or e) from None
    return getattr(mod, attr)


__all__ = list(_LAZY)
