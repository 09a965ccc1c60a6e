"""Datasets, splits and the S1/S2 pairs the engine trains on.

``build(cfg, device, seed)`` is the one assembly of every source: the training set is split into training
and validation (``data.val_fraction``, seeded by ``data.split_seed``), capped by ``data.subset``, and put on
the device; the training batches come as ``Step``s pairing S1 with ITRA's second mini-batch S2 (see
``itra_tune.data.pairs``). Sources are registered by name in ``SOURCES``:

- ``images``: sets held whole on the device (digits, synthetic, fmnist, kmnist, cifar10/100, stl10);
- ``folders``: ImageNet-layout folders through torch's DataLoader;
- ``text``: Zhang et al. CSV files, tokenized once and cached;
- ``own``: your own data: text from a CSV file (``csv``) or a saved Hugging Face dataset (``hf_disk``), images
  from a factory of yours (``data.name: package.module:callable``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from itra_tune.config import ConfigError, DataConfig, is_callable_ref
from itra_tune.data import folders, images, own, text
from itra_tune.data.base import Batch, Batches, DatasetMissing, Source, Stream
from itra_tune.data.images import Images, random_crop, synthetic_mixture
from itra_tune.data.pairs import Pairs, Step, build_pairs, memory_rows

SOURCES: dict[str, Source] = {**images.SOURCES, **folders.SOURCES, **text.SOURCES, **own.SOURCES}


@dataclass
class Data:
    """Training, validation and test data, ready for the engine.

    ``train`` yields one ``Step`` per optimizer step; ``val`` and ``test`` yield unaugmented (x, y) batches
    in order (``val`` is None when ``data.val_fraction`` is 0); ``sample(split, n)`` gives a fixed random
    subset of ``val`` or ``test``, for metrics such as compactness, and ``sample_index(split, n)`` the rows it
    takes, in the order ``val`` and ``test`` yield them. ``state_dict`` holds the generators and the S2 stream,
    so a resumed run draws the same batches.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std) the model applies
    train: Pairs
    val: Any
    test: Any
    sample: Callable[[str, int], Batch]
    generators: dict[str, torch.Generator]
    num_train: int
    sample_index: Callable[[str, int], Tensor]
    labels: tuple[str, ...] | None = None  # the class names, by class number; None when the data names none

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: g.get_state() for k, g in self.generators.items()}
        if hasattr(self.train.second, "state_dict"):
            state["second"] = self.train.second.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, g in self.generators.items():
            g.set_state(state[k])
        # a run that drew no S2 (lambda 0) has no stream to restore: resumed with lambda above 0 (population based
        # training mutates it), the stream starts from its restored generator
        if hasattr(self.train.second, "load_state_dict") and "second" in state:
            self.train.second.load_state_dict(state["second"])


def source(name: str) -> Source:
    """The registry entry of dataset ``name``; an unknown name lists the known ones."""
    if name in SOURCES:
        return SOURCES[name]
    if is_callable_ref(name):
        return own.image_factory(name)
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(SOURCES))}, or "
                      f"package.module:callable for images of your own (data.name)")


def modality(name: str) -> str:
    """``image`` or ``text``: which models can read dataset ``name``."""
    return source(name).modality


def root_of(cfg: DataConfig) -> Path:
    """Where datasets live: ``data.root``, else ``$ITRA_TUNE_DATA``, else ``~/.cache/itra_tune/data``."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    return Path(os.environ.get("ITRA_TUNE_DATA", Path.home() / ".cache" / "itra_tune" / "data"))


def check_available(cfg: DataConfig) -> None:
    """Raise DatasetMissing now, rather than in every trial, when the dataset's files are absent.

    Looks for the files; reads none of them.
    """
    source(cfg.name).check(cfg, root_of(cfg))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random partition of range(n) into (train, validation) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def build(cfg: DataConfig, device: torch.device, seed: int, paired: bool = True,
          model_name: str | None = None) -> Data:
    """The data a configuration asks for, on ``device``.

    Args:
        cfg: the data section of the configuration.
        device: where the batches are made.
        seed: drives shuffling and augmentation (the split has its own ``cfg.split_seed``).
        paired: whether the loss matches S1 against a second mini-batch; without, Steps hold S1 alone.
        model_name: for text, whose tokenizer to use when ``cfg.tokenizer`` does not say.
    """
    src = source(cfg.name)
    train_full, test = src.load(cfg, root_of(cfg), model_name)
    tr_idx, val_idx = split_indices(len(train_full), cfg.val_fraction, cfg.split_seed)
    if cfg.subset is not None:
        tr_idx = tr_idx[: cfg.subset]
    train = train_full.subset(tr_idx).to(device)
    val = train_full.subset(val_idx).to(device) if len(val_idx) else None  # None: nothing held out to select on
    test = test.to(device)
    gens = {name: train.generator(seed * 1000 + i) for i, name in enumerate(("s1", "s2"))}

    def held(split: str) -> Any:
        return {"val": val or test, "test": test}[split]

    def sample(split: str, n: int) -> Batch:
        return held(split).sample(n, seed)

    def sample_index(split: str, n: int) -> Tensor:
        return held(split).sample_index(n, seed)

    num_classes = src.num_classes or max(train_full.num_classes, test.num_classes)
    labels = src.labels or getattr(train_full, "labels", None)
    if labels is not None and len(labels) != num_classes:
        raise ConfigError(f"data.name {cfg.name!r}: {len(labels)} class names for {num_classes} classes "
                          f"(labels 0 to {num_classes - 1}); name every class, or none")
    return Data(num_classes, tuple(train.input_shape), train.normalization, build_pairs(cfg, train, gens, paired),
                val.batches(cfg.eval_batch_size) if val is not None else None, test.batches(cfg.eval_batch_size),
                sample, gens, len(train), sample_index, labels)


__all__ = [
    "SOURCES", "Batch", "Batches", "Data", "DatasetMissing", "Images", "Pairs", "Source", "Step", "Stream", "build",
    "memory_rows",
    "check_available", "modality", "random_crop", "root_of", "source", "split_indices", "synthetic_mixture",
]
