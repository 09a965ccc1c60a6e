"""ITRA in your own training loop: the second mini-batch and the penultimate features of your model.

    net = itra_tune.split_model(model)                  # net(x) -> (model(x), the features its head reads)
    second = itra_tune.SecondBatch(train_set, batch_size=64, seed=1)
    x2, y2 = next(second)                               # S2, shuffled independently of your own loader

With ``itra_tune.ITRALoss`` (``itra_tune.losses``) these are all a plain PyTorch loop needs; the README shows
one. Nothing here imports Ray, MLflow or transformers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from itra_tune.models import HEAD_NAMES, WithFeatures, find_head, split_model


class _Shuffle(Sampler[int]):
    """A seeded permutation per pass over ``n`` indices, started ``start`` indices in (for resuming)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start:].tolist())

    def __len__(self) -> int:
        return self.n - self.start


class SecondBatch:
    """S2 for ITRA: an endless stream of mini-batches of ``dataset``, shuffled independently of your loader.

    A ``DataLoader`` underneath (``loader_kwargs`` go to it: ``collate_fn``, ``num_workers``, ``pin_memory``);
    each pass over the data is a fresh permutation drawn from ``seed``, the process's rank and the pass number,
    so the stream is the same on every run with the same seed, and under data parallelism (a
    ``torch.distributed`` process group, as DDP, Lightning and accelerate set up) every rank draws its own S2.
    ``state_dict()`` and ``load_state_dict()`` resume it exactly where it was: save it with your checkpoint (one
    rank's state resumes every rank: each keeps its own permutations).

    A dataset of dicts (Hugging Face ``datasets``) gives dict batches, as your loader does: ``batch =
    next(second)``; for tokenized examples of different lengths pass ``collate_fn=pad_collate(pad_id)``, and
    ``join_batches(s1, s2, pad_id)`` puts S1 and S2 into one forward pass.

    Args:
        dataset: any map-style ``Dataset``, usually your training set.
        batch_size: m2, examples per S2 (the paper uses m2 = m1).
        seed: pick one other than your loader's, or S2 may follow S1.
        drop_last: drop each pass's short last batch (default), so every S2 has ``batch_size`` examples.
        rank: whose stream this is; None: the ``torch.distributed`` rank when a process group is initialized,
            else 0.
    """

    RANK_STRIDE = 1_000_003  # rank r draws the permutations of seed + r * RANK_STRIDE

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, drop_last: bool = True,
                 rank: int | None = None, **loader_kwargs: Any) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if batch_size < 1 or (drop_last and n < batch_size) or n == 0:
            raise ValueError(f"SecondBatch: a dataset of {n} examples gives no batch of {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.rank = process_rank() if rank is None else rank
        self.sampler = _Shuffle(n, self._stream_seed())
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=drop_last,
                                 **loader_kwargs)
        self.epoch, self.taken = 0, 0  # the pass, and the batches of it handed out
        self._it: Iterator[Any] | None = None
        self._checked = False

    def _stream_seed(self) -> int:
        return self.seed + self.RANK_STRIDE * self.rank

    def __iter__(self) -> SecondBatch:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self.sampler.epoch, self.sampler.start = self.epoch, self.taken * self.batch_size
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:  # the pass is over: the next one is a new permutation
            self.epoch, self.taken = self.epoch + 1, 0
            self._it = None
            return next(self)
        if not self._checked:
            _check_batch(batch)
            self._checked = True
        self.taken += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.sampler.seed = self._stream_seed()
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._it = None  # the loader restarts at the saved position on the next batch


def process_rank() -> int:
    """This process's rank in the default ``torch.distributed`` process group; 0 without one."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _check_batch(batch: Any) -> None:
    """A dict batch with a column of strings is text the model cannot read: say so, rather than hand it on."""
    if isinstance(batch, Mapping):
        text = [k for k, v in batch.items() if isinstance(v, (list, tuple)) and v and isinstance(v[0], str)]
        if text:
            raise ValueError(_strings("SecondBatch", text[0]))


def _strings(who: str, column: str) -> str:
    return (f"{who}: the dataset's column {column!r} holds strings; tokenize it first (dataset.map(...)) and keep "
            f"only the model's inputs and the label (dataset.with_format('torch', columns=[...]), or "
            f"dataset.remove_columns([{column!r}]))")


PAD_VALUES = {"labels": -100}  # columns padded with something other than the pad id or 0


def pad_collate(pad_id: int = 0) -> Any:
    """A ``collate_fn`` for dict examples of token lists of different lengths (a tokenized Hugging Face dataset):
    each list column padded to the batch's longest, ``input_ids`` with ``pad_id``, masks and type ids with 0;
    scalars stacked. For ``DataLoader`` and ``SecondBatch`` alike."""

    def collate(examples: list[Mapping[str, Any]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key in examples[0]:
            if isinstance(examples[0][key], str):
                raise ValueError(_strings("pad_collate", key))
            values = [torch.as_tensor(e[key]) for e in examples]
            if values[0].dim() == 0:
                out[key] = torch.stack(values)
            else:
                fill = pad_id if key == "input_ids" else PAD_VALUES.get(key, 0)
                out[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=fill)
        return out

    return collate


def join_batches(s1: Mapping[str, Tensor], s2: Mapping[str, Tensor], pad_id: int = 0) -> dict[str, Tensor]:
    """Two dict batches of token ids (S1 and S2) as one, padded to the wider: one forward pass for both, whose
    outputs split at ``len(s1["input_ids"])``. Columns of one dimension (labels) are concatenated."""
    out: dict[str, Tensor] = {}
    for key, a in s1.items():
        b = s2[key]
        if a.dim() > 1:
            width = max(a.shape[1], b.shape[1])
            fill = pad_id if key == "input_ids" else PAD_VALUES.get(key, 0)
            pad = torch.nn.functional.pad
            a, b = pad(a, (0, width - a.shape[1]), value=fill), pad(b, (0, width - b.shape[1]), value=fill)
        out[key] = torch.cat([a, b])
    return out


__all__ = ["HEAD_NAMES", "SecondBatch", "WithFeatures", "find_head", "join_batches", "pad_collate", "process_rank",
           "split_model"]
