"""Folders of images in the ImageNet layout (``imagenet/train/<class>/*.JPEG``, ``imagenet/val/<class>/...``),
read through torch's DataLoader with worker processes: too large to hold on the device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from itra_tune.config import DataConfig
from itra_tune.data.base import Batch, DatasetMissing, Source

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Folder:
    """Examples ``idx`` of an ImageFolder, seen through an augmenting and a plain transform.

    Same interface as the sets held on the device: ``batches`` and ``stream`` give DataLoaders whose batches
    arrive on ``device``.
    """

    input_shape = (3, 224, 224)

    def __init__(self, augmented: Any, plain: Any, idx: list[int] | None = None, num_workers: int = 2,
                 device: torch.device | None = None) -> None:
        self.augmented, self.plain, self.num_workers = augmented, plain, num_workers
        self.idx = list(range(len(plain))) if idx is None else idx
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def num_classes(self) -> int:
        return len(self.plain.classes)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.plain.classes)  # the class folders' names

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return IMAGENET_MEAN, IMAGENET_STD

    def subset(self, idx: Tensor) -> Folder:
        return Folder(self.augmented, self.plain, [self.idx[i] for i in idx.tolist()], self.num_workers, self.device)

    def to(self, device: torch.device) -> Folder:
        return Folder(self.augmented, self.plain, self.idx, self.num_workers, device)

    def join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b])

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # samplers draw on the CPU

    def _loader(self, batch_size: int, gen: torch.Generator | None, augment: bool, drop_last: bool) -> Any:
        from torch.utils.data import DataLoader, RandomSampler, Subset

        ds = Subset(self.augmented if augment else self.plain, self.idx)
        sampler = RandomSampler(ds, generator=gen) if gen is not None else None
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", drop_last=drop_last)

    def batches(self, batch_size: int, gen: torch.Generator | None = None, augment: bool = False,
                drop_last: bool = False) -> OnDevice:
        return OnDevice(self._loader(batch_size, gen, augment, drop_last), self.device)

    def stream(self, batch_size: int, gen: torch.Generator, augment: bool) -> OnDevice:
        return OnDevice(self._loader(batch_size, gen, augment, True), self.device)

    def sample(self, n: int, seed: int) -> Batch:
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        xs, ys = zip(*(self.plain[self.idx[i]] for i in idx))
        return torch.stack(xs).to(self.device), torch.tensor(ys, device=self.device)


class OnDevice:
    """A DataLoader whose batches arrive on ``device``; ``next`` cycles endlessly (for S2)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device, self._it = loader, device, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self)
            return next(self._it)


def _check(cfg: DataConfig, root: Path) -> None:
    base = root / "imagenet"
    for part in ("train", "val"):
        if not (base / part).is_dir():
            raise DatasetMissing(f"dataset 'imagenet' not found: expected class folders under {base / part}; "
                                 "point data.root at the folder holding imagenet/train and imagenet/val")


def _imagenet(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Folder, Folder]:
    from torchvision import datasets, transforms

    _check(cfg, root)
    base = root / "imagenet"
    # pixels in [0, 1]: the model normalizes them itself (models.Normalize with IMAGENET_MEAN, IMAGENET_STD)
    aug = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                              transforms.ToTensor()])
    plain = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    train_aug = datasets.ImageFolder(str(base / "train"), aug)
    train_plain = datasets.ImageFolder(str(base / "train"), plain)
    test = datasets.ImageFolder(str(base / "val"), plain)
    return Folder(train_aug, train_plain, num_workers=cfg.num_workers), Folder(test, test, num_workers=cfg.num_workers)


SOURCES = {"imagenet": Source(_imagenet, _check)}
