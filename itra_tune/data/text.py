"""Text datasets: the CSV files of Zhang, Zhao and LeCun (2015), tokenized once and cached on disk.

Each dataset folder holds ``train.csv`` and ``test.csv`` (optionally gzipped): a 1-based class index, then one
or more quoted text fields (title, body, ...). The token ids of a whole split live in one flat tensor with
row offsets; a batch is cut out and padded to its own longest row on the device, so no loader worker and no
fixed-length padding stand in the way. Padding is marked by -1; the model turns it into its attention mask.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from itra_tune import hf
from itra_tune.config import ConfigError, DataConfig
from itra_tune.data.base import Batch, DatasetMissing, Held, Source

PAD = hf.PAD
CACHE_FORMAT = 2  # bump when the cached layout changes (2: a CSV's class names kept beside its tokens)


@dataclass(frozen=True)
class TextDataset:
    folders: tuple[str, ...]  # folder names tried under data.root, e.g. Zhang's "ag_news_csv"
    labels: tuple[str, ...]  # the class names, by class number (the dataset's classes.txt)
    test_folds: bool = False  # only test.csv exists: cut train and test folds out of its rows

    @property
    def num_classes(self) -> int:
        return len(self.labels)


AG_NEWS = ("World", "Sports", "Business", "Sci/Tech")
STARS = ("1", "2", "3", "4", "5")
DATASETS: dict[str, TextDataset] = {
    "ag_news": TextDataset(("ag_news", "ag_news_csv"), AG_NEWS),
    "amazon_full": TextDataset(("amazon_full", "amazon_review_full_csv"), STARS),
    "yahoo_answers": TextDataset(("yahoo_answers", "yahoo_answers_csv"), (
        "Society & Culture", "Science & Mathematics", "Health", "Education & Reference", "Computers & Internet",
        "Sports", "Business & Finance", "Entertainment & Music", "Family & Relationships", "Politics & Government")),
    "yelp_full": TextDataset(("yelp_full", "yelp_review_full_csv"), STARS),
    # The official AG News test split alone (7,600 rows), when train.csv is not at hand: 80% of its rows
    # (seeded) become the training pool, from which the validation split is taken; 20% are the test fold.
    "ag_news_test_folds": TextDataset(("ag_news", "ag_news_csv"), AG_NEWS, test_folds=True),
}
TEST_FOLD = 0.2


# --- reading -----------------------------------------------------------------------------------------


def read_csv(path: str | Path) -> tuple[list[int], list[str]]:
    """Labels (0-based) and texts of a Zhang et al. CSV file: ``"label","field",...``, maybe gzipped.

    Fields are joined by a space; the literal two-character ``\\n`` the files use for line breaks becomes
    a space. Quoted commas, quotes and real newlines inside fields are read by the csv module.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    labels, texts = [], []
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            try:
                label = int(row[0])
            except ValueError:
                raise ConfigError(f"{path}: line {line}: expected a class index in the first field, got "
                                  f"{row[0][:40]!r}; is this a Zhang et al. (2015) CSV file?") from None
            if label < 1 or len(row) < 2:
                raise ConfigError(f"{path}: line {line}: expected a class index from 1 and at least one text "
                                  "field")
            labels.append(label - 1)
            texts.append(" ".join(field.replace("\\n", " ").strip() for field in row[1:]))
    return labels, texts


def _find(base: Path, split: str) -> Path | None:
    for name in (f"{split}.csv", f"{split}.csv.gz"):
        if (base / name).is_file():
            return base / name
    return None


def files(name: str, root: Path) -> dict[str, Path]:
    """The CSV files of dataset ``name`` under ``root``; DatasetMissing names what is missing and the fix."""
    spec = DATASETS[name]
    needed = ("test",) if spec.test_folds else ("train", "test")
    for folder in spec.folders:
        found = {split: _find(root / folder, split) for split in needed}
        if all(found.values()):
            return found  # type: ignore[return-value]
    want = " and ".join(f"{s}.csv" for s in needed)
    raise DatasetMissing(
        f"dataset {name!r} not found: expected {want} (Zhang et al. 2015 CSV, optionally .gz) in "
        f"{root / spec.folders[0]}; copy the files there or point data.root at the folder holding "
        f"{spec.folders[0]}/ (nothing is downloaded)"
    )


# --- tokenizing, once ----------------------------------------------------------------------------------


@dataclass
class Tokens:
    """Token ids of many texts in one flat tensor: row i is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: Tensor  # (T,) int32
    offsets: Tensor  # (N + 1,) int64
    y: Tensor  # (N,) int64


def _cache_dir(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("ITRA_TUNE_CACHE", Path.home() / ".cache" / "itra_tune" / "tokens"))


def cache_key(path: Path, tokenizer: Any, max_length: int) -> str:
    """What the cached ids depend on: the file (path, size, time), the tokenizer and the maximum length."""
    st = path.stat()
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ident = {
        "format": CACHE_FORMAT, "file": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
        "tokenizer": [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")), len(vocab),
                      hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()],
        "max_length": max_length,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def tokenize(texts: list[str], labels: list[int], tokenizer: Any, max_length: int,
             chunk: int = 2048) -> Tokens:
    """Token ids (with the tokenizer's special tokens, truncated to ``max_length``) of ``texts``."""
    rows: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        rows += tokenizer(texts[i:i + chunk], truncation=True, max_length=max_length)["input_ids"]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    ids = torch.tensor([t for r in rows for t in r], dtype=torch.int32)
    return Tokens(ids, offsets, torch.tensor(labels, dtype=torch.int64))


def tokenized(path: Path, tokenizer: Any, max_length: int, cache_dir: Path) -> tuple[Tokens, bool]:
    """The tokens of a CSV file, from the cache when present; also whether the cache was used."""
    cached = cache_dir / f"{path.name.split('.')[0]}-{cache_key(path, tokenizer, max_length)}.pt"
    if cached.is_file():
        state = torch.load(cached, weights_only=True)
        return Tokens(state["ids"], state["offsets"], state["y"]), True
    labels, texts = read_csv(path)
    print(f"tokenizing {len(texts):,} texts of {path} (max_length {max_length}) once; cache: {cached}",
          file=sys.stderr)
    tokens = tokenize(texts, labels, tokenizer, max_length)
    cache_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"ids": tokens.ids, "offsets": tokens.offsets, "y": tokens.y}, buf)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, cached)  # atomic: trials tokenizing side by side never read a half-written file
    return tokens, False


# --- batches ----------------------------------------------------------------------------------------------


@dataclass
class Texts(Held):
    """Rows ``rows`` of a tokenized split, on one device; batches are padded to their own longest row."""

    tokens: Tokens
    rows: Tensor  # (N,) int64 indices into tokens
    max_length: int

    @property
    def y(self) -> Tensor:
        return self.tokens.y[self.rows]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.max_length,)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def to(self, device: torch.device) -> Texts:
        t = self.tokens
        return Texts(Tokens(t.ids.to(device), t.offsets.to(device), t.y.to(device)), self.rows.to(device),
                     self.max_length)

    def subset(self, idx: Tensor) -> Texts:
        return Texts(self.tokens, self.rows[idx.to(self.rows.device)], self.max_length)

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def join(self, a: Tensor, b: Tensor) -> Tensor:
        return pad_cat(a, b)

    def batch(self, idx: Tensor, augment: bool = False, gen: torch.Generator | None = None) -> Batch:
        """Rows ``idx`` as (B, L) int64 ids padded with PAD to the longest row (L), and their labels."""
        rows = self.rows[idx]
        start = self.tokens.offsets[rows]  # (B,)
        length = self.tokens.offsets[rows + 1] - start  # (B,)
        width = int(length.max())  # one host sync per batch: the padded width
        col = torch.arange(width, device=rows.device)
        pos = (start[:, None] + col).clamp_max(self.tokens.ids.numel() - 1)  # (B, L)
        x = torch.where(col < length[:, None], self.tokens.ids[pos].long(), PAD)
        return x, self.tokens.y[rows]


def load_split(name: str, cfg: DataConfig, root: Path, tokenizer: Any) -> tuple[Texts, Texts]:
    """(train, test) of a text dataset, tokenized with ``tokenizer`` (cached), on the CPU."""
    found = files(name, root)
    cache = _cache_dir(cfg)
    if DATASETS[name].test_folds:
        tokens, _ = tokenized(found["test"], tokenizer, cfg.max_length, cache)
        perm = torch.randperm(tokens.y.numel(), generator=torch.Generator().manual_seed(7600))
        n_test = int(round(TEST_FOLD * perm.numel()))
        return Texts(tokens, perm[n_test:], cfg.max_length), Texts(tokens, perm[:n_test], cfg.max_length)
    train, _ = tokenized(found["train"], tokenizer, cfg.max_length, cache)
    test, _ = tokenized(found["test"], tokenizer, cfg.max_length, cache)
    return (Texts(train, torch.arange(train.y.numel()), cfg.max_length),
            Texts(test, torch.arange(test.y.numel()), cfg.max_length))


def pad_cat(a: Tensor, b: Tensor) -> Tensor:
    """Two token batches of maybe different widths as one (B1 + B2, max L) batch."""
    width = max(a.shape[1], b.shape[1])
    pad = torch.nn.functional.pad
    return torch.cat([pad(a, (0, width - a.shape[1]), value=PAD), pad(b, (0, width - b.shape[1]), value=PAD)])


def _source(name: str) -> Source:
    def load(cfg: DataConfig, root: Path, model_name: str | None = None) -> tuple[Texts, Texts]:
        return load_split(name, cfg, root, hf.load_tokenizer(cfg.tokenizer or model_name or ""))

    def check(cfg: DataConfig, root: Path) -> None:
        files(name, root)
        if cfg.tokenizer:
            hf.check(cfg.tokenizer)

    return Source(load, check, modality="text", num_classes=DATASETS[name].num_classes, labels=DATASETS[name].labels)


SOURCES = {name: _source(name) for name in DATASETS}
