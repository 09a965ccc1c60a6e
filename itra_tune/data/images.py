"""Image datasets small enough to hold whole on the training device as one tensor: the digits, a synthetic
mixture, Fashion-MNIST and KMNIST (idx files), CIFAR-10/100 and STL-10 (through torchvision). Batches are
cropped, flipped and normalized on the device, so no loader worker stands between trials sharing a GPU."""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from itra_tune import extras
from itra_tune.config import DataConfig
from itra_tune.data.base import Batch, DatasetMissing, Held, Source, no_files


@dataclass
class Images(Held):
    """Labelled images on one device. ``x`` is uint8 (scaled by 1/255) or already-float in [0, 1], (N, C, H, W).

    Batches are float32 pixels in [0, 1] (torchvision's ``ToTensor`` convention); ``mean`` and ``std`` are the
    dataset's per-channel statistics, which the model's own first layer applies (``models.Normalize``), so a
    model handed over takes pixels as they come.
    """

    x: Tensor
    y: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pad: int = 0  # random crop after zero padding by this many pixels
    flip: bool = False  # random horizontal flip

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std

    def to(self, device: torch.device) -> Images:
        return Images(self.x.to(device), self.y.to(device), self.mean, self.std, self.crop_pad, self.flip)

    def subset(self, idx: Tensor) -> Images:
        return Images(self.x[idx], self.y[idx], self.mean, self.std, self.crop_pad, self.flip)

    def batch(self, idx: Tensor, augment: bool = False, gen: torch.Generator | None = None) -> Batch:
        """Pixels in [0, 1] (when ``augment``, randomly cropped and flipped) of examples ``idx``."""
        x = self.x[idx]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if augment and self.crop_pad:
            x = random_crop(x, self.crop_pad, gen)
        if augment and self.flip:
            flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, self.y[idx]


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


def download(name: str, base: Path, fetch: Callable[[], Any], expected: str) -> None:
    """Run torchvision's ``fetch`` of dataset ``name`` into ``base``; on failure one DatasetMissing line, and
    no folder left behind that was not there before. torchvision's own retry messages are kept quiet."""
    made = base  # the outermost folder the download may create
    while not made.parent.exists():
        made = made.parent
    existed = made.exists()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fetch()
    except (OSError, RuntimeError, ValueError) as e:  # urllib's URLError is an OSError
        if not existed:
            shutil.rmtree(made, ignore_errors=True)
        reason = str(getattr(e, "reason", "") or e).strip().splitlines()
        raise DatasetMissing(
            f"dataset {name!r}: the download failed ({reason[0] if reason else type(e).__name__}); on a machine "
            f"without network put {expected} in {base} yourself and set data.download=false"
        ) from None


# --- Fashion-MNIST and KMNIST: the idx files ------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file: magic (dtype, ndim), ndim big-endian sizes, then the raw bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mnist_like(folder: str, tv_class: str, mean: float, std: float, flip: bool) -> Source:
    files = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def find(base: Path, stem: str) -> Path | None:
        for d in (base, base / tv_class / "raw"):
            for suffix in (".gz", ""):
                if (d / (stem + suffix)).is_file():
                    return d / (stem + suffix)
        return None

    def paths(root: Path) -> list[list[Path]]:
        base = root / folder
        found = []
        for img, lab in files.values():
            pair = [find(base, img), find(base, lab)]
            if None in pair:
                raise DatasetMissing(
                    f"dataset {folder!r} not found: expected {img}.gz and {lab}.gz in {base}; copy the idx files "
                    "there, point data.root at their parent folder, or set data.download=true on a machine with network"
                )
            found.append(pair)
        return found

    def fetch(root: Path) -> None:
        import torchvision

        for train in (True, False):
            getattr(torchvision.datasets, tv_class)(str(root / folder), train=train, download=True)

    def check(cfg: DataConfig, root: Path) -> None:
        if cfg.download and find(root / folder, files["train"][0]) is None:
            download(folder, root / folder, lambda: fetch(root), "the four idx .gz files")
        paths(root)

    def load(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Images, Images]:
        check(cfg, root)
        sets = []
        for img, lab in paths(root):
            x = torch.from_numpy(read_idx(img).copy())[:, None]  # (N, 1, 28, 28) uint8
            y = torch.from_numpy(read_idx(lab).astype(np.int64))
            sets.append(Images(x, y, (mean,), (std,), crop_pad=2, flip=flip))
        return sets[0], sets[1]

    return Source(load, check)


# --- CIFAR and STL-10 through torchvision ---------------------------------------------------------------


def _torchvision_set(folder: str, tv_class: str, mean: tuple[float, ...], std: tuple[float, ...], crop_pad: int,
                     expected: str) -> Source:
    def missing(base: Path) -> DatasetMissing:
        return DatasetMissing(f"dataset {folder!r} not found: expected {expected} in {base}; copy it there, point "
                              f"data.root at its parent folder, or set data.download=true on a machine with network")

    def kwargs(train: bool) -> dict[str, Any]:
        return {"split": "train" if train else "test"} if tv_class == "STL10" else {"train": train}

    def check(cfg: DataConfig, root: Path) -> None:
        base = root / folder
        if cfg.download and not (base / expected).is_dir():
            import torchvision

            cls = getattr(torchvision.datasets, tv_class)
            download(folder, base, lambda: [cls(str(base), download=True, **kwargs(t)) for t in (True, False)],
                     expected + "/")
        if not (base / expected).is_dir():
            raise missing(base)

    def load(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Images, Images]:
        import torchvision

        check(cfg, root)
        base = root / folder
        cls = getattr(torchvision.datasets, tv_class)
        sets = []
        for train in (True, False):
            try:
                ds = cls(str(base), download=False, **kwargs(train))
            except RuntimeError:
                raise missing(base) from None
            x = torch.from_numpy(np.asarray(ds.data))
            x = x if tv_class == "STL10" else x.permute(0, 3, 1, 2)  # CIFAR stores (N, H, W, C)
            labels = ds.labels if tv_class == "STL10" else ds.targets
            y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
            sets.append(Images(x.contiguous(), y, mean, std, crop_pad=crop_pad, flip=True))
        sets[0].labels = tuple(ds.classes)  # torchvision's class names, from the dataset's own files
        return sets[0], sets[1]

    return Source(load, check)


# --- bundled and generated ----------------------------------------------------------------------------


def _sklearn(cfg: DataConfig, root: Path) -> None:
    extras.check("sklearn", what="the digits dataset")


def _digits(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Images, Images]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images); a fixed 20% is the test split.

    The raw values are integers 0-16; a pixel here is the raw value / 16, in [0, 1]. The file is read as
    ``sklearn.datasets.load_digits`` reads it, without importing scikit-learn (a second, in every trial).
    """
    import importlib.util

    package = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
    raw = np.loadtxt(package / "datasets" / "data" / "digits.csv.gz", delimiter=",")  # 64 pixels, then the label
    x = torch.tensor(raw[:, :-1], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(raw[:, -1].astype(np.int64))
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


def _synthetic(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Images, Images]:
    x, y = synthetic_mixture(3000)
    return Images(x[:2400], y[:2400], (0.0,), (1.0,)), Images(x[2400:], y[2400:], (0.0,), (1.0,))


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

SOURCES: dict[str, Source] = {
    "digits": Source(_digits, _sklearn, labels=tuple("0123456789")),
    "synthetic": Source(_synthetic, no_files),
    "fmnist": replace(_mnist_like("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, flip=True), labels=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "kmnist": replace(_mnist_like("kmnist", "KMNIST", 0.1918, 0.3483, flip=False),
                      labels=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    "cifar10": _torchvision_set("cifar10", "CIFAR10", CIFAR_MEAN, CIFAR_STD, 4, "cifar-10-batches-py"),
    "cifar100": _torchvision_set("cifar100", "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4,
                                 "cifar-100-python"),
    "stl10": _torchvision_set("stl10", "STL10", (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), 12,
                              "stl10_binary"),
}

__all__ = ["SOURCES", "Images", "random_crop", "read_idx", "synthetic_mixture"]
