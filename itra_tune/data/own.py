"""Your own data in a search: text from a CSV file or a Hugging Face dataset saved to disk, images from a factory.

- ``csv``: ``data.path`` is a folder holding ``train.csv`` and ``test.csv``, or one CSV file (then a seeded 20%
  of its rows is the test split); the first row names the columns, ``data.text_column`` (one or several,
  comma-separated, joined by a space) and ``data.label_column`` say which to read.
- ``hf_disk``: ``data.path`` is what ``datasets``' ``save_to_disk`` wrote: a ``DatasetDict`` with ``train`` and
  ``test`` splits, or one ``Dataset`` (cut as a single CSV file is).
- ``package.module:callable`` as ``data.name``: a function of yours, called with no arguments, returning the
  (train, test) torch datasets of (image, label) pairs: images as (C, H, W) tensors (float in [0, 1] or uint8) or
  PIL images.

Classes are read from the data: integer labels are kept as they are when they run from 0, any other labels (names,
or integers with gaps) are numbered in sorted order and keep their names (``Data.labels``, then the model's,
its export's and its MLflow model's), as do a saved dataset's ``ClassLabel`` names and a factory's ``classes``.
The validation split is cut from the training split as for every dataset (``data.val_fraction``), and S2 is
paired the same way. Text is tokenized once, by the model's own tokenizer, and cached as the paper's datasets are.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itra_tune import extras, hf
from itra_tune.config import ConfigError, DataConfig, import_callable
from itra_tune.data.base import DatasetMissing, Source
from itra_tune.data.images import Images
from itra_tune.data.text import CACHE_FORMAT, TEST_FOLD, Texts, Tokens, _cache_dir, tokenize

Rows = tuple[list[str], list[Any]]  # texts, raw labels
NAMES = "class_names"  # the token cache's entry of the class names, beside its splits


# --- reading --------------------------------------------------------------------------------------------


def _columns(cfg: DataConfig) -> list[str]:
    return [c.strip() for c in cfg.text_column.split(",") if c.strip()]


def _path(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise ConfigError(f"data.name {cfg.name!r} reads your own files: set data.path to them")
    return Path(cfg.path).expanduser()


def csv_files(cfg: DataConfig) -> dict[str, Path]:
    """``{"train": ..., "test": ...}``, or ``{"all": ...}`` for a single file; DatasetMissing when absent."""
    path = _path(cfg)
    if path.is_file():
        return {"all": path}
    found = {s: next((path / f for f in (f"{s}.csv", f"{s}.csv.gz") if (path / f).is_file()), None)
             for s in ("train", "test")}
    if path.is_dir() and all(found.values()):
        return found  # type: ignore[return-value]
    raise DatasetMissing(f"data.path {str(path)!r}: expected a CSV file, or a folder holding train.csv and test.csv "
                         f"(data.name csv)")


def read_csv(path: Path, cfg: DataConfig) -> Rows:
    """The texts and labels of a CSV file with a header row, by the configured column names."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        _need(reader.fieldnames or [], cfg, str(path))
        texts, labels = [], []
        for row in reader:
            texts.append(" ".join((row[c] or "").strip() for c in _columns(cfg)))
            labels.append(row[cfg.label_column])
    return texts, labels


def _need(have: Sequence[str], cfg: DataConfig, where: str) -> None:
    if not have:
        raise ConfigError(f"{where}: empty, not even a header row; a CSV file starts with a header naming its "
                          f"columns ({cfg.label_column} and {cfg.text_column} here: data.label_column, "
                          f"data.text_column)")
    for key, col in [("data.label_column", cfg.label_column)] + [("data.text_column", c) for c in _columns(cfg)]:
        if col not in have:
            raise ConfigError(f"{where}: no column {col!r} ({key}); its columns are {', '.join(map(str, have))}")


def _load_from_disk(cfg: DataConfig) -> Any:
    extras.check("datasets", what="data.name hf_disk")
    import datasets

    path = _path(cfg)
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DatasetMissing(f"data.path {str(path)!r}: no dataset saved by datasets' save_to_disk there "
                             f"(data.name hf_disk)")
    return datasets.load_from_disk(str(path))


def hf_splits(cfg: DataConfig) -> dict[str, Any]:
    """The splits of a saved dataset: ``train`` and ``test``, or ``all``."""
    ds = _load_from_disk(cfg)
    if not hasattr(ds, "keys"):
        return {"all": ds}
    if "train" not in ds or "test" not in ds:
        raise ConfigError(f"data.path {cfg.path!r}: the saved DatasetDict has the splits {', '.join(ds)}; "
                          f"hf_disk reads train and test (or a single Dataset)")
    return {"train": ds["train"], "test": ds["test"]}


def read_hf(ds: Any, cfg: DataConfig) -> Rows:
    _need(ds.column_names, cfg, f"data.path {cfg.path!r}")
    columns = [ds[c] for c in _columns(cfg)]
    texts = [" ".join(str(v).strip() for v in parts) for parts in zip(*columns)]
    return texts, list(ds[cfg.label_column])


def declared_names(ds: Any, cfg: DataConfig) -> tuple[str, ...] | None:
    """The class names a saved dataset declares for its label column (a ``ClassLabel``), by class number."""
    names = getattr(getattr(ds, "features", {}).get(cfg.label_column), "names", None)
    return tuple(map(str, names)) if names else None


def labels_of(raw: Sequence[Any]) -> list[Any]:
    """Labels as the data holds them, with integers written as text (a CSV file's) read as integers."""
    if all(isinstance(v, str) and v.strip().lstrip("-").isdigit() for v in raw):
        return [int(v) for v in raw]
    return [v if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else str(v) for v in raw]


def class_index(labels: Sequence[Any], where: str) -> dict[Any, int]:
    """Label -> class number: integers from 0 on as they are, any other labels numbered in sorted order."""
    values = set(labels)
    if not values:
        raise ConfigError(f"{where}: no examples, only its column names; a classifier needs labelled rows")
    if len(values) < 2:
        raise ConfigError(f"{where}: one class only ({next(iter(values), None)!r}); a classifier needs two or more")
    if all(isinstance(v, (int, np.integer)) for v in values) and min(values) == 0 \
            and max(values) == len(values) - 1:
        return {v: int(v) for v in values}
    return {v: i for i, v in enumerate(sorted(values, key=lambda v: (isinstance(v, str), v)))}


def class_names(index: dict[Any, int]) -> tuple[str, ...] | None:
    """The names of the classes ``class_index`` numbered, by class number; None when the labels are the class
    numbers themselves (integers from 0)."""
    if all(isinstance(v, (int, np.integer)) and v == i for v, i in index.items()):
        return None
    return tuple(str(v) for v, _ in sorted(index.items(), key=lambda kv: kv[1]))


def _numbered(labels: Sequence[Any], index: dict[Any, int], where: str) -> list[int]:
    try:
        return [index[v] for v in labels]
    except KeyError as e:
        raise ConfigError(f"{where}: the test split has label {e.args[0]!r}, which the training split lacks") from None


# --- tokenizing, once -----------------------------------------------------------------------------------


def _fingerprint(files: Sequence[Path], cfg: DataConfig, tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ident = {"format": CACHE_FORMAT, "kind": cfg.name, "columns": [cfg.text_column, cfg.label_column],
             "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
             "tokenizer": [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")), len(vocab),
                           hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()],
             "max_length": cfg.max_length}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def _tokens(splits: dict[str, Rows], cfg: DataConfig, tokenizer: Any, files: Sequence[Path],
            declared: tuple[str, ...] | None = None) -> tuple[dict[str, Tokens], tuple[str, ...] | None]:
    """The splits' tokens and the class names, from the cache when present (keyed on the files, the columns and
    the tokenizer). ``declared``: the names the data declares for its integer labels (a ``ClassLabel``)."""
    cache = _cache_dir(cfg) / f"{cfg.name}-{_fingerprint(files, cfg, tokenizer)}.pt"
    if cache.is_file():
        state = torch.load(cache, weights_only=True)
        names = state.pop(NAMES, None)
        return {s: Tokens(t["ids"], t["offsets"], t["y"]) for s, t in state.items()}, \
            tuple(names) if names else None
    splits = {s: (texts, labels_of(labels)) for s, (texts, labels) in splits.items()}
    index = class_index(splits["train" if "train" in splits else "all"][1], f"data.path {cfg.path!r}")
    names = declared if declared and len(declared) == len(index) and class_names(index) is None else \
        class_names(index)
    out = {}
    for split, (texts, labels) in splits.items():
        print(f"tokenizing {len(texts):,} texts of {cfg.path} ({split}, max_length {cfg.max_length}) once; cache: "
              f"{cache}", file=sys.stderr)
        out[split] = tokenize(texts, _numbered(labels, index, f"data.path {cfg.path!r}"), tokenizer, cfg.max_length)
    cache.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({s: {"ids": t.ids, "offsets": t.offsets, "y": t.y} for s, t in out.items()}
               | ({NAMES: list(names)} if names else {}), buf)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, cache)
    return out, names


def _held(tokens: dict[str, Tokens], max_length: int) -> tuple[Texts, Texts]:
    if "all" not in tokens:
        return tuple(Texts(t, torch.arange(t.y.numel()), max_length) for t in (tokens["train"], tokens["test"]))
    t = tokens["all"]
    perm = torch.randperm(t.y.numel(), generator=torch.Generator().manual_seed(t.y.numel()))
    n_test = int(round(TEST_FOLD * perm.numel()))
    return Texts(t, perm[n_test:], max_length), Texts(t, perm[:n_test], max_length)


def _text_source(read: Callable[[DataConfig], tuple[dict[str, Rows], list[Path], tuple[str, ...] | None]],
                 check: Callable[[DataConfig], None]) -> Source:
    def load(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Texts, Texts]:
        tokenizer = hf.load_tokenizer(cfg.tokenizer or model_name or "")
        splits, files, declared = read(cfg)
        tokens, names = _tokens(splits, cfg, tokenizer, files, declared)
        train, test = _held(tokens, cfg.max_length)
        train.labels = names
        return train, test

    def check_files(cfg: DataConfig, root: Path) -> None:
        check(cfg)
        if cfg.tokenizer:
            hf.check(cfg.tokenizer)

    return Source(load, check_files, modality="text")


def _read_csv(cfg: DataConfig) -> tuple[dict[str, Rows], list[Path], None]:
    files = csv_files(cfg)
    return {s: read_csv(p, cfg) for s, p in files.items()}, list(files.values()), None


def _check_csv(cfg: DataConfig) -> None:
    for path in csv_files(cfg).values():  # the header of each file names the columns
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            _need(next(csv.reader(f), []), cfg, str(path))


def _read_hf(cfg: DataConfig) -> tuple[dict[str, Rows], list[Path], tuple[str, ...] | None]:
    splits = hf_splits(cfg)
    files = sorted(Path(f["filename"]) for ds in splits.values() for f in ds.cache_files)
    declared = declared_names(splits["train" if "train" in splits else "all"], cfg)
    return {s: read_hf(ds, cfg) for s, ds in splits.items()}, files, declared


def _check_hf(cfg: DataConfig) -> None:
    for ds in hf_splits(cfg).values():
        _need(ds.column_names, cfg, f"data.path {cfg.path!r}")


# --- images from a factory ------------------------------------------------------------------------------


def _image_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    array = np.asarray(image)  # a PIL image: (H, W) or (H, W, C), uint8
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _stack(dataset: Any, ref: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        pairs = [dataset[i] for i in range(len(dataset))]
    except TypeError:
        raise ConfigError(f"data.name {ref!r}: its {split} set is not a map-style dataset (len and [i])") from None
    if not pairs:
        raise ConfigError(f"data.name {ref!r}: its {split} set is empty")
    images = [_image_tensor(p[0]) for p in pairs]
    if images[0].dim() != 3 or any(im.shape != images[0].shape for im in images):
        raise ConfigError(f"data.name {ref!r}: {split} images must be (C, H, W) tensors or PIL images of one size; "
                          f"the first is {tuple(images[0].shape)}")
    x = torch.stack(images)
    if x.is_floating_point() and (x.min() < 0 or x.max() > 1):
        raise ConfigError(f"data.name {ref!r}: float images must be pixels in [0, 1] (the model normalizes them); "
                          f"got values from {float(x.min()):.3g} to {float(x.max()):.3g}")
    return x, torch.as_tensor([int(p[1]) for p in pairs], dtype=torch.int64)


def image_factory(ref: str) -> Source:
    """The source of ``data.name: package.module:callable``: images held on the device as the bundled sets are,
    normalized by the training split's own per-channel statistics."""

    def load(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Images, Images]:
        made = import_callable(ref, "data.name")()
        if not (isinstance(made, (tuple, list)) and len(made) == 2):
            raise ConfigError(f"data.name {ref!r} returned a {type(made).__name__}; a dataset factory returns "
                              f"(train, test), two torch datasets of (image, label)")
        (x, y), (xt, yt) = _stack(made[0], ref, "training"), _stack(made[1], ref, "test")
        scaled = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        mean = tuple(scaled.mean((0, 2, 3)).tolist())
        std = tuple(max(s, 1e-3) for s in scaled.std((0, 2, 3)).tolist())
        train = Images(x, y, mean, std)
        classes = getattr(made[0], "classes", None)  # torchvision's datasets and ImageFolder name their classes
        if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
            train.labels = tuple(classes)
        return train, Images(xt, yt, mean, std)

    def check(cfg: DataConfig, root: Path) -> None:
        import_callable(ref, "data.name")

    return Source(load, check)


SOURCES: dict[str, Source] = {
    "csv": _text_source(_read_csv, _check_csv),
    "hf_disk": _text_source(_read_hf, _check_hf),
}

__all__ = ["SOURCES", "class_index", "image_factory", "read_csv"]
