"""What every data source shares: the error for missing files, the registry entry, and batches of a set held
on the training device (one pass in shuffled or fixed order, or an endless independent stream)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from itra_tune.config import ConfigError, DataConfig

Batch = tuple[Tensor, Tensor]  # (x: (B, C, H, W) float or (B, L) token ids, y: (B,) int64)


class DatasetMissing(ConfigError):
    """A dataset's files are not where the configuration says."""


@dataclass(frozen=True)
class Source:
    """A registry entry: how to load a dataset and how to tell, cheaply, that its files are there.

    Attributes:
        load: ``(cfg, root, model_name) -> (train, test)``, two labelled sets on the CPU; ``model_name``
            names the tokenizer of text sources when ``cfg.tokenizer`` does not.
        check: ``(cfg, root) -> None``; raises DatasetMissing naming the files and the fix; reads no data.
        modality: ``image`` or ``text``: which models can read it.
        num_classes: when the dataset's definition fixes it; None counts the labels.
        labels: the class names, by class number, when the dataset's definition fixes them; None reads them from
            the loaded training set's ``labels`` (your files' string labels, a folder's class names), if any.
    """

    load: Callable[[DataConfig, Path, str | None], tuple[Any, Any]]
    check: Callable[[DataConfig, Path], None]
    modality: str = "image"
    num_classes: int | None = None
    labels: tuple[str, ...] | None = None


def no_files(cfg: DataConfig, root: Path) -> None:
    """The check of a source that reads no files (bundled or generated data)."""


class Held:
    """A labelled set held whole on one device. Subclasses give ``y``, ``batch``, ``subset``, ``to`` and
    ``input_shape``; ``join`` puts two batches into one forward pass (images: cat)."""

    y: Tensor
    labels: tuple[str, ...] | None = None  # the class names, by class number, when the data names its classes

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self) else 0

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Per-channel (mean, std) that the model applies to this set's inputs; None when it takes them as they are."""
        return None

    def batch(self, idx: Tensor, augment: bool = False, gen: torch.Generator | None = None) -> Batch:
        raise NotImplementedError

    def join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b])

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def batches(self, batch_size: int, gen: torch.Generator | None = None, augment: bool = False,
                drop_last: bool = False) -> Batches:
        return Batches(self, batch_size, gen, augment, drop_last)

    def stream(self, batch_size: int, gen: torch.Generator, augment: bool) -> Stream:
        return Stream(self, batch_size, gen, augment)

    def sample(self, n: int, seed: int) -> Batch:
        """A fixed random subset of ``n`` examples, unaugmented (for metrics such as compactness)."""
        return self.batch(self.sample_index(n, seed))

    def sample_index(self, n: int, seed: int) -> Tensor:
        """The rows ``sample(n, seed)`` takes, in its order."""
        return torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].to(self.device)


class Batches:
    """One pass over ``held`` in shuffled batches (training) or in order (evaluation, ``gen`` None)."""

    def __init__(self, held: Held, batch_size: int, gen: torch.Generator | None = None, augment: bool = False,
                 drop_last: bool = False) -> None:
        self.held, self.batch_size, self.gen = held, batch_size, gen
        self.augment, self.drop_last = augment, drop_last

    def __len__(self) -> int:
        n = len(self.held)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n, dev = len(self.held), self.held.device
        order = torch.arange(n, device=dev) if self.gen is None else torch.randperm(n, device=dev, generator=self.gen)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.held.batch(idx, self.augment, self.gen)


class Stream:
    """An endless stream of shuffled batches with its own generator: the second mini-batch S2."""

    def __init__(self, held: Held, batch_size: int, gen: torch.Generator, augment: bool) -> None:
        self.held, self.batch_size, self.gen, self.augment = held, batch_size, gen, augment
        self._order = torch.empty(0, dtype=torch.long, device=held.device)
        self._pos = 0

    def __next__(self) -> Batch:
        if self._pos + self.batch_size > self._order.numel():
            rest = self._order[self._pos:]
            self._order = torch.cat([rest, torch.randperm(len(self.held), device=rest.device, generator=self.gen)])
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.held.batch(idx, self.augment, self.gen)

    def __iter__(self) -> Stream:
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"order": self._order.cpu(), "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order = state["order"].to(self.held.device)
        self._pos = int(state["pos"])
