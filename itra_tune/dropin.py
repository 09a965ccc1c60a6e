"""ITRA in your own training loop: the second mini-batch and the penultimate features of your model.

    net = itra_tune.split_model(model)                  # net(x) -> (model(x), the features its head reads)
    second = itra_tune.SecondBatch(train_set, batch_size=64, seed=1)
    x2, y2 = next(second)                               # S2, shuffled independently of your own loader

With ``itra_tune.ITRALoss`` (``itra_tune.losses``) these are all a plain PyTorch loop needs; the README shows
one. Nothing here imports Ray, MLflow or transformers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler


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
    each pass over the data is a fresh permutation drawn from ``seed`` and the pass number, so the stream is the
    same on every run with the same seed. ``state_dict()`` and ``load_state_dict()`` resume it exactly where it
    was: save it with your checkpoint.

    Args:
        dataset: any map-style ``Dataset``, usually your training set.
        batch_size: m2, examples per S2 (the paper uses m2 = m1).
        seed: pick one other than your loader's, or S2 may follow S1.
        drop_last: drop each pass's short last batch (default), so every S2 has ``batch_size`` examples.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, drop_last: bool = True,
                 **loader_kwargs: Any) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if batch_size < 1 or (drop_last and n < batch_size) or n == 0:
            raise ValueError(f"SecondBatch: a dataset of {n} examples gives no batch of {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.sampler = _Shuffle(n, seed)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=drop_last,
                                 **loader_kwargs)
        self.epoch, self.taken = 0, 0  # the pass, and the batches of it handed out
        self._it: Iterator[Any] | None = None

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
        self.taken += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = self.sampler.seed = int(state["seed"])
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._it = None  # the loader restarts at the saved position on the next batch


HEAD_NAMES = ("classifier", "fc", "head", "heads", "score")  # torchvision, timm, Hugging Face classifiers


def find_head(model: nn.Module) -> nn.Module:
    """The layer that maps a model's penultimate features to its outputs: timm's ``get_classifier()``, else the last
    ``nn.Linear`` of the first of ``classifier``, ``fc``, ``head``, ``heads``, ``score`` the model has, else the
    model's last ``nn.Linear``.

    Raises:
        ValueError: the model has no linear layer; pass ``head=`` to ``split_model``.
    """
    get = getattr(model, "get_classifier", None)
    if callable(get) and isinstance(get(), nn.Linear):
        return get()
    for name in HEAD_NAMES:
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            linear = _last_linear(part)
            if linear is not None:
                return linear
    linear = _last_linear(model)
    if linear is None:
        raise ValueError(f"split_model: found no linear layer in {type(model).__name__}; pass head=<the module "
                         f"that maps the features to the outputs>")
    return linear


def _last_linear(module: nn.Module) -> nn.Module | None:
    found = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


class WithFeatures(nn.Module):
    """``model`` that also returns the features its head reads: ``net(*args) -> (model(*args), features)``.

    The features are the head's input, caught by a forward hook, flattened to (B, D): the penultimate layer the
    paper matches. The model itself is unchanged (``net.model``): save, export and serve it as before. Call
    ``remove()`` to take the hook off.
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = find_head(model) if head is None else head
        self._caught: Tensor | None = None
        self._hook = self.head.register_forward_pre_hook(self._catch)

    def _catch(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._caught = args[0]

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, Tensor]:
        self._caught = None
        out = self.model(*args, **kwargs)
        h, self._caught = self._caught, None
        if h is None:
            raise RuntimeError(f"split_model: the head {type(self.head).__name__} did not run in the forward pass; "
                               f"pass head=<the module that maps the features to the outputs>")
        return out, h.flatten(1) if h.dim() > 2 else h

    def remove(self) -> None:
        self._hook.remove()


def split_model(model: nn.Module, head: nn.Module | None = None) -> WithFeatures:
    """Your classifier, returning its penultimate features beside its outputs, without rewriting it.

    Works with torchvision and timm classifiers, Hugging Face ``...ForSequenceClassification`` models (the
    features are what their classifier reads: BERT's pooled output after dropout, DistilBERT's first token after
    its pre-classifier) and any model whose last linear layer is its head; ``head=`` names another layer.

        net = split_model(torchvision.models.resnet18(num_classes=10))
        logits, h = net(x)                           # h: (B, 512)
    """
    return WithFeatures(model, head)
