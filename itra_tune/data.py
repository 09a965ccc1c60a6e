"""Datasets, splits and loaders.

Small image sets (everything but ImageNet) are held whole on the training device as one uint8 tensor;
batches are cropped, flipped and normalized there, so no loader worker stands between trials sharing a
machine and the GPU. The second mini-batch S2 of ITRA comes from its own, independently shuffled stream
over the same training split (the paper's Eq. 3). ImageNet-style folders go through torch's DataLoader.
Text datasets (``itra_tune.text``) are token ids held the same way and padded per batch.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from itra_tune import text
from itra_tune.config import ConfigError, DataConfig
from itra_tune.text import DatasetMissing

Batch = tuple[Tensor, Tensor]  # (x (B, C, H, W) float or (B, L) token ids, y (B,) int64)


# --- one labelled set of images, held as one tensor ------------------------------------------------


@dataclass
class Images:
    """Labelled images on one device. ``x`` is uint8 (scaled by 1/255) or already-float, (N, C, H, W)."""

    x: Tensor
    y: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pad: int = 0  # random crop after zero padding by this many pixels
    flip: bool = False  # random horizontal flip

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def to(self, device: torch.device) -> Images:
        return Images(self.x.to(device), self.y.to(device), self.mean, self.std, self.crop_pad, self.flip)

    def subset(self, idx: Tensor) -> Images:
        return Images(self.x[idx], self.y[idx], self.mean, self.std, self.crop_pad, self.flip)

    def batch(self, idx: Tensor, augment: bool = False, gen: torch.Generator | None = None) -> Batch:
        """Normalized (and, when ``augment``, randomly cropped and flipped) examples ``idx``."""
        x = self.x[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if augment and self.crop_pad:
            x = random_crop(x, self.crop_pad, gen)
        if augment and self.flip:
            flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        mean, std = self._stats
        return (x - mean) / std, self.y[idx]

    @functools.cached_property
    def _stats(self) -> tuple[Tensor, Tensor]:
        # made once on the data's device, not per batch (a host-to-device copy each time on CUDA)
        shape = (1, -1, 1, 1)
        return (torch.tensor(self.mean, device=self.x.device).view(shape),
                torch.tensor(self.std, device=self.x.device).view(shape))


def random_crop(x: Tensor, pad: int, gen: torch.Generator | None = None) -> Tensor:
    """Per-example random crops of a zero-padded batch, by one gather: (B, C, H, W) -> (B, C, H, W)."""
    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return xp[batch, chan, rows, cols]


class Batches:
    """One pass over ``images`` in shuffled batches (training) or in order (evaluation)."""

    def __init__(self, images: Images, batch_size: int, gen: torch.Generator | None = None,
                 augment: bool = False, drop_last: bool = False) -> None:
        self.images, self.batch_size, self.gen = images, batch_size, gen
        self.augment, self.drop_last = augment, drop_last

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n, dev = len(self.images), self.images.y.device
        if self.gen is None:
            order = torch.arange(n, device=dev)
        else:
            order = torch.randperm(n, device=dev, generator=self.gen)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images.batch(idx, self.augment, self.gen)


class Stream:
    """An endless stream of shuffled batches with its own generator: the second mini-batch S2."""

    def __init__(self, images: Images, batch_size: int, gen: torch.Generator, augment: bool) -> None:
        self.images, self.batch_size, self.gen, self.augment = images, batch_size, gen, augment
        self._order = torch.empty(0, dtype=torch.long, device=images.y.device)
        self._pos = 0

    def __next__(self) -> Batch:
        n = len(self.images)
        if self._pos + self.batch_size > self._order.numel():
            rest = self._order[self._pos:]
            self._order = torch.cat([rest, torch.randperm(n, device=rest.device, generator=self.gen)])
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.images.batch(idx, self.augment, self.gen)

    def __iter__(self) -> Stream:
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"order": self._order.cpu(), "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order = state["order"].to(self.images.y.device)
        self._pos = int(state["pos"])


# --- the bundle the engine consumes ----------------------------------------------------------------


@dataclass
class Data:
    """Training, validation and test data, ready for the engine.

    ``train`` yields S1 batches (of m1 + m2 with ``pairing: split``); ``second`` yields S2 batches, or is
    None when S2 comes from the same batch. ``val`` and ``test`` yield unaugmented batches in order.
    ``sample(split, n)`` gives a fixed random subset of a split, for metrics such as compactness.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    train: Any
    second: Any
    val: Any
    test: Any
    sample: Callable[[str, int], Batch]
    generators: dict[str, torch.Generator]
    num_train: int

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: g.get_state() for k, g in self.generators.items()}
        if isinstance(self.second, Stream):
            state["second"] = self.second.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, g in self.generators.items():
            g.set_state(state[k])
        if isinstance(self.second, Stream):
            self.second.load_state_dict(state["second"])


# --- the registry: name -> loader of (train, test) Images on the CPU ---------------------------------


def _default_root() -> Path:
    return Path(os.environ.get("ITRA_TUNE_DATA", Path.home() / ".cache" / "itra_tune" / "data"))


def _read_idx(path: Path) -> np.ndarray:
    # The MNIST idx format: magic (dtype, ndim), ndim big-endian sizes, then the raw bytes.
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_like(folder: str, tv_class: str, mean: float, std: float,
                flip: bool) -> Callable[..., tuple[Images, Images]]:
    files = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def find(base: Path, stem: str) -> Path | None:
        for d in (base, base / tv_class / "raw"):
            for suffix in (".gz", ""):
                if (d / (stem + suffix)).is_file():
                    return d / (stem + suffix)
        return None

    def load(root: Path, download: bool) -> tuple[Images, Images]:
        base = root / folder
        if download and find(base, files["train"][0]) is None:
            import torchvision

            for train in (True, False):
                getattr(torchvision.datasets, tv_class)(str(base), train=train, download=True)
        sets = []
        for img, lab in files.values():
            paths = [find(base, img), find(base, lab)]
            if None in paths:
                raise DatasetMissing(
                    f"dataset {folder!r} not found: expected {img}.gz and {lab}.gz in {base}; copy the idx files "
                    "there, point data.root at their parent folder, or set data.download=true on a machine with network"
                )
            x = torch.from_numpy(_read_idx(paths[0]).copy())[:, None]  # (N, 1, 28, 28) uint8
            y = torch.from_numpy(_read_idx(paths[1]).astype(np.int64))
            sets.append(Images(x, y, (mean,), (std,), crop_pad=2, flip=flip))
        return sets[0], sets[1]

    return load


def _torchvision_set(folder: str, tv_class: str, mean: tuple[float, ...], std: tuple[float, ...],
                     crop_pad: int, expected: str) -> Callable[..., tuple[Images, Images]]:
    def load(root: Path, download: bool) -> tuple[Images, Images]:
        import torchvision

        base = root / folder
        cls = getattr(torchvision.datasets, tv_class)
        sets = []
        for train in (True, False):
            kwargs = {"split": "train" if train else "test"} if tv_class == "STL10" else {"train": train}
            try:
                ds = cls(str(base), download=download, **kwargs)
            except RuntimeError:
                raise DatasetMissing(
                    f"dataset {folder!r} not found: expected {expected} in {base}; copy it there, point data.root "
                    f"at its parent folder, or set data.download=true on a machine with network"
                ) from None
            x = torch.from_numpy(np.asarray(ds.data))
            x = x if tv_class == "STL10" else x.permute(0, 3, 1, 2)  # CIFAR stores (N, H, W, C)
            labels = ds.labels if tv_class == "STL10" else ds.targets
            y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
            sets.append(Images(x.contiguous(), y, mean, std, crop_pad=crop_pad, flip=True))
        return sets[0], sets[1]

    return load


def _digits(root: Path, download: bool) -> tuple[Images, Images]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images); a fixed 20% is the test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1797))
    test, train = perm[: len(y) // 5], perm[len(y) // 5:]
    full = Images(x, y, (0.3,), (0.4,))
    return full.subset(train), full.subset(test)


def synthetic_mixture(n: int, num_classes: int = 10, modes: int = 3, latent: int = 8, noise: float = 0.6,
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """A class-conditional Gaussian mixture with ``modes`` modes per class, embedded as 1x8x8 images.

    Returns:
        x (n, 1, 8, 8) float32 and y (n,) int64. The same ``seed`` gives the same mixture and draws.
    """
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, modes, latent, generator=g) * 2.0  # (K, M, L)
    proj = torch.randn(latent, 64, generator=g) / latent**0.5  # (L, 64)
    y = torch.randint(0, num_classes, (n,), generator=g)
    mode = torch.randint(0, modes, (n,), generator=g)
    z = centers[y, mode] + noise * torch.randn(n, latent, generator=g)  # (n, L)
    x = z @ proj + 0.1 * torch.randn(n, 64, generator=g)
    return x.view(n, 1, 8, 8), y


def _synthetic(root: Path, download: bool) -> tuple[Images, Images]:
    x, y = synthetic_mixture(3000)
    return Images(x[:2400], y[:2400], (0.0,), (1.0,)), Images(x[2400:], y[2400:], (0.0,), (1.0,))


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

DATASETS: dict[str, Callable[..., tuple[Images, Images]]] = {
    "digits": _digits,
    "synthetic": _synthetic,
    "fmnist": _mnist_like("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, flip=True),
    "kmnist": _mnist_like("kmnist", "KMNIST", 0.1918, 0.3483, flip=False),
    "cifar10": _torchvision_set("cifar10", "CIFAR10", CIFAR_MEAN, CIFAR_STD, 4, "cifar-10-batches-py/"),
    "cifar100": _torchvision_set("cifar100", "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4,
                                 "cifar-100-python/"),
    "stl10": _torchvision_set("stl10", "STL10", (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), 12,
                              "stl10_binary/"),
    "imagenet": None,  # folder of images: see _imagenet
}


def is_text(name: str) -> bool:
    return name in text.DATASETS


def check_name(name: str) -> None:
    if name not in DATASETS and name not in text.DATASETS:
        known = ", ".join(sorted([*DATASETS, *text.DATASETS]))
        raise ConfigError(f"unknown dataset {name!r}; choose one of {known} (data.name)")


def check_available(cfg: DataConfig) -> None:
    """Raise DatasetMissing now, rather than in every trial, when the dataset's files are absent."""
    check_name(cfg.name)
    root = Path(cfg.root).expanduser() if cfg.root else _default_root()
    if cfg.name == "imagenet":
        for part in ("train", "val"):
            if not (root / "imagenet" / part).is_dir():
                raise DatasetMissing(f"dataset 'imagenet' not found: expected class folders under "
                                     f"{root / 'imagenet' / part}; point data.root at the folder holding imagenet/")
    elif is_text(cfg.name):
        text.files(cfg.name, root)
    elif cfg.name not in ("digits", "synthetic"):
        DATASETS[cfg.name](root, cfg.download)


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
        paired: whether the loss needs a second mini-batch; without one, S1 batches alone.
        model_name: for text, whose tokenizer to use when ``cfg.tokenizer`` does not say.
    """
    check_name(cfg.name)
    root = Path(cfg.root).expanduser() if cfg.root else _default_root()
    if cfg.name == "imagenet":
        return _imagenet(cfg, root, device, seed, paired)
    if is_text(cfg.name):
        tokenizer = text.load_tokenizer(cfg.tokenizer or model_name or "")
        train_full, test = text.load(cfg.name, cfg, root, tokenizer)
    else:
        train_full, test = DATASETS[cfg.name](root, cfg.download)
    tr_idx, val_idx = split_indices(len(train_full), cfg.val_fraction, cfg.split_seed)
    if cfg.subset is not None:
        tr_idx = tr_idx[: cfg.subset]
    train = train_full.subset(tr_idx).to(device)
    val = train_full.subset(val_idx).to(device) if len(val_idx) else test.to(device)
    test = test.to(device)

    gens = {name: torch.Generator(device).manual_seed(seed * 1000 + i) for i, name in enumerate(("s1", "s2"))}
    m1 = cfg.batch_size
    m2 = cfg.second_batch_size or m1
    split_pairing = paired and cfg.pairing == "split"
    if split_pairing and m1 != m2:
        raise ConfigError("data.second_batch_size must equal data.batch_size with data.pairing=split")
    if len(train) < (m1 + m2 if split_pairing else max(m1, m2)):
        raise ConfigError(f"data.batch_size {m1} exceeds the {len(train)} training examples; lower it")
    train_batches = Batches(train, m1 + m2 if split_pairing else m1, gens["s1"], cfg.augment, drop_last=True)
    second = Stream(train, m2, gens["s2"], cfg.augment) if paired and not split_pairing else None
    eval_bs = cfg.eval_batch_size

    def sample(split: str, n: int) -> Batch:
        images = {"val": val, "test": test}[split]
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].to(images.y.device)
        return images.batch(idx)

    if is_text(cfg.name):
        num_classes = text.DATASETS[cfg.name].num_classes
    else:
        num_classes = int(max(train_full.y.max(), test.y.max())) + 1
    return Data(num_classes, train.input_shape, train_batches, second, Batches(val, eval_bs),
                Batches(test, eval_bs), sample, gens, len(train))


# --- folders of images (ImageNet layout), through torch's DataLoader ---------------------------------


class _ToDevice:
    """Wraps a DataLoader so its batches arrive on ``device``; ``next`` cycles endlessly (for S2)."""

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


def _imagenet(cfg: DataConfig, root: Path, device: torch.device, seed: int, paired: bool) -> Data:
    from torch.utils.data import DataLoader, RandomSampler, Subset
    from torchvision import datasets, transforms

    base = root / "imagenet"
    for part in ("train", "val"):
        if not (base / part).is_dir():
            raise DatasetMissing(
                f"dataset 'imagenet' not found: expected class folders under {base / part}; "
                f"point data.root at the folder holding imagenet/train and imagenet/val"
            )
    norm = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    aug = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                              transforms.ToTensor(), norm])
    plain = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    train_aug = datasets.ImageFolder(str(base / "train"), aug if cfg.augment else plain)
    train_plain = datasets.ImageFolder(str(base / "train"), plain)
    test = datasets.ImageFolder(str(base / "val"), plain)
    tr_idx, val_idx = split_indices(len(train_aug), cfg.val_fraction, cfg.split_seed)
    if cfg.subset is not None:
        tr_idx = tr_idx[: cfg.subset]
    train, val = Subset(train_aug, tr_idx.tolist()), Subset(train_plain, val_idx.tolist())
    gens = {name: torch.Generator().manual_seed(seed * 1000 + i) for i, name in enumerate(("s1", "s2"))}
    m1 = cfg.batch_size
    m2 = cfg.second_batch_size or m1
    split_pairing = paired and cfg.pairing == "split"
    kw = {"num_workers": cfg.num_workers, "pin_memory": device.type == "cuda", "drop_last": True}

    def loader(ds: Any, bs: int, gen: torch.Generator | None) -> _ToDevice:
        sampler = RandomSampler(ds, generator=gen) if gen is not None else None
        return _ToDevice(DataLoader(ds, batch_size=bs, sampler=sampler, **kw), device)

    def eval_loader(ds: Any) -> _ToDevice:
        return _ToDevice(DataLoader(ds, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers), device)

    def sample(split: str, n: int) -> Batch:
        ds = {"val": val if len(val) else test, "test": test}[split]
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        xs, ys = zip(*(ds[i] for i in idx))
        return torch.stack(xs).to(device), torch.tensor(ys, device=device)

    return Data(len(test.classes), (3, 224, 224), loader(train, m1 + m2 if split_pairing else m1, gens["s1"]),
                loader(train, m2, gens["s2"]) if paired and not split_pairing else None,
                eval_loader(val if len(val) else test), eval_loader(test), sample, gens, len(train))
