"""Which models the paper's form of ITRA collapses, why, and which remedies prevent it: the README's own loop
(one epoch of Fashion-MNIST, 6,000 training images as raw [0, 1] pixels, SGD 0.05 momentum 0.9, batch 64,
``ITRALoss`` ITRA-c with the median bandwidth) over models with and without normalization before the
features, lambda and remedy by remedy, every run from the same weights and batches.

    ITRA_TUNE_DATA=/path/to/data python -m benchmarks.collapse [--models plain_cnn,relu_mlp] \\
        [--lams 0.05,0.1,0.5,2] [--remedies paper,guarded] [--out collapse.json]

Every 10 steps it records, at S1 and S2's features: their spread (root-mean-square distance between them), the
fraction of dead features (zero on every example of the batch), the median bandwidth sigma, and the gradient
norms of the CE term and of the weighted matching term over the model's parameters; at the end, accuracy on
2,000 test images. A run "collapsed" when its accuracy is below half of the same model's at lambda 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

import itra_tune
from itra_tune import mmd, models
from itra_tune.data.images import read_idx

STEPS_PER_RECORD = 10


def plain_cnn(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """The issue's user model: no normalization anywhere."""
    return nn.Sequential(nn.Conv2d(1, 16, 3), act(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), act(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 64), act(), nn.Linear(64, 10))


def plain_mlp(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), act(), nn.Linear(256, 64), act(), nn.Linear(64, 10))


def small_resnet() -> nn.Module:
    """A ResNet of two BasicBlocks (BatchNorm throughout), 64-d pooled features."""
    down = nn.Sequential(nn.Conv2d(16, 64, 1, stride=2, bias=False), nn.BatchNorm2d(64))
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         BasicBlock(16, 16), BasicBlock(16, 64, stride=2, downsample=down),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def engine_model(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:  # the engine's own model, without its input normalization (raw pixels, as above)
        return models.build(name, 10, (1, 28, 28))
    return build


MODELS: dict[str, Callable[[], nn.Module]] = {  # name -> builder; the comment says what sits before the features
    "plain_cnn": plain_cnn,  # ReLU, no normalization
    "tanh_cnn": lambda: plain_cnn(nn.Tanh),  # saturating, no normalization
    "relu_mlp": plain_mlp,  # ReLU, no normalization
    "tanh_mlp": lambda: plain_mlp(nn.Tanh),  # saturating, no normalization
    "mlp": engine_model("mlp"),  # the engine's mlp: ReLU, no normalization
    "small_cnn": engine_model("small_cnn"),  # the engine's: BatchNorm then ReLU
    "small_resnet": small_resnet,  # BatchNorm
}


class Floor:
    """A remedy kept here, not in the product: the median bandwidth, floored at half of the largest seen."""

    def __init__(self) -> None:
        self.peak = 0.0

    def __call__(self, loss: itra_tune.ITRALoss, h1: Tensor, h2: Tensor) -> None:
        sigma = float(mmd.batch_bandwidth(h1.detach(), h2.detach()))
        self.peak = max(self.peak, sigma)
        loss.bandwidth, loss.sigma = "fixed", max(sigma, 0.5 * self.peak)


def standardize(h: Tensor) -> Tensor:
    return (h - h.mean(0)) / (h.std(0) + 1e-5)


# name -> (ITRALoss arguments, what S2 is, a transform of the pooled features before the loss, a per-step hook)
REMEDIES: dict[str, dict[str, Any]] = {
    "paper": {"loss": {"form": "paper"}},
    "guarded (default)": {"loss": {"form": "guarded"}},
    "scale_invariant": {"loss": {"form": "scale_invariant"}},
    "l2-normalized": {"loss": {"form": "paper"}, "transform": lambda h: F.normalize(h, dim=1)},
    "standardized": {"loss": {"form": "paper"}, "transform": standardize},
    "lambda warm-up 90 steps": {"loss": {"form": "paper", "lam_warmup_steps": 90}},
    "sigma frozen (sigma_ema 1)": {"loss": {"form": "paper", "sigma_ema": 1.0}},
    "sigma averaged (sigma_ema 0.99)": {"loss": {"form": "paper", "sigma_ema": 0.99}},
    "sigma floor (half its peak)": {"loss": {"form": "paper"}, "hook": Floor},
    "detached S2": {"loss": {"form": "paper", "pairing": "detached"}},
    "memory S2 (4 batches)": {"loss": {"form": "paper", "pairing": "memory"}},
}


def fashion_mnist(root: Path, n_train: int = 6000, n_test: int = 2000) -> tuple[Tensor, ...]:
    def load(stem: str, n: int) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(read_idx(root / f"{stem}-images-idx3-ubyte.gz").copy())[:n, None].float() / 255
        y = torch.from_numpy(read_idx(root / f"{stem}-labels-idx1-ubyte.gz").astype(np.int64))[:n]
        return x, y
    return (*load("train", n_train), *load("t10k", n_test))


def run(model_name: str, lam: float, remedy: str, data: tuple[Tensor, ...], batch: int = 64) -> dict[str, Any]:
    """One epoch of the README's loop; the per-step records and the test accuracy."""
    xtr, ytr, xte, yte = data
    spec = REMEDIES[remedy]
    torch.manual_seed(0)
    model = MODELS[model_name]()
    net = itra_tune.split_model(model)
    loss_fn = itra_tune.ITRALoss(10, lam=lam, **spec["loss"])
    pairing = spec["loss"].get("pairing", "independent")
    transform, hook = spec.get("transform"), spec.get("hook", lambda: None)()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    order1, order2 = torch.randperm(len(xtr), generator=g1), torch.randperm(len(xtr), generator=g2)
    rows, t0 = [], time.perf_counter()
    model.train()
    for i in range(len(xtr) // batch):
        i1, i2 = order1[i * batch:(i + 1) * batch], order2[i * batch:(i + 1) * batch]
        if pairing == "independent":
            logits, h = net(torch.cat([xtr[i1], xtr[i2]]))
            logits, h1, h2 = logits[:batch], h[:batch], h[batch:]
        else:
            logits, h1 = net(xtr[i1])
            with torch.no_grad():
                h2 = net(xtr[i2])[1]
        pooled = torch.cat([h1, h2])
        if transform is not None:
            pooled = transform(pooled)
        if hook is not None:
            hook(loss_fn, pooled[:batch], pooled[batch:])
        y1, y2 = ytr[i1], ytr[i2]
        parts = loss_fn(logits, y1, pooled[:batch]) if pairing == "memory" else \
            loss_fn(logits, y1, pooled[:batch], pooled[batch:], y2)
        if i % STEPS_PER_RECORD == 0:
            rows.append(record(i, h1, h2, parts, params))
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return {"model": model_name, "lam": lam, "remedy": remedy, "acc": acc, "steps": rows,
            "watch": loss_fn.collapse, "seconds": time.perf_counter() - t0}


def record(step: int, h1: Tensor, h2: Tensor, parts: Any, params: list[Tensor]) -> dict[str, float]:
    with torch.no_grad():
        h = torch.cat([h1, h2]).detach()
        spread = mmd.mean_sq_dist(h).sqrt().item()
        dead = (h.abs().amax(0) == 0).float().mean().item()
        sigma = mmd.batch_bandwidth(h[: len(h1)], h[len(h1):]).item()
    weighted = parts.total - parts.ce
    g_ce = torch.autograd.grad(parts.ce, params, retain_graph=True, allow_unused=True)
    g_match = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True) \
        if weighted.requires_grad else []
    return {"step": step, "spread": spread, "dead": dead, "sigma": sigma, "grad_ce": _norm(g_ce),
            "grad_match": _norm(g_match), "ce": parts.ce.item(), "match": parts.match.item()}


def _norm(grads: Any) -> float:
    sq = [g.float().pow(2).sum() for g in grads if g is not None]
    return math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.collapse", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--lams", default="0.05,0.1,0.5,2")
    p.add_argument("--remedies", default=",".join(REMEDIES), help="comma-separated names of REMEDIES")
    p.add_argument("--out", help="write every run's records to this JSON file")
    args = p.parse_args(argv)
    root = Path(os.environ.get("ITRA_TUNE_DATA", Path.home() / ".cache/itra_tune/data")) / "fashion_mnist"
    if not root.is_dir():
        raise itra_tune.config.ConfigError(f"Fashion-MNIST not found in {root}; set ITRA_TUNE_DATA to the folder "
                                           "that holds fashion_mnist/")
    torch.set_num_threads(1)
    data = fashion_mnist(root)
    results = []
    print(f"{'model':<13} {'remedy':<32} {'lam':>5} {'acc':>6} {'x lam 0':>7} {'spread 0 -> end':>17} "
          f"{'dead end':>8} {'|g_match|/|g_ce| end':>20}  watch", flush=True)
    for name in args.models.split(","):
        base = run(name, 0.0, "paper", data)
        results.append(base)
        print(f"{name:<13} {'(lambda 0: cross-entropy)':<32} {0:>5} {100 * base['acc']:5.1f}%", flush=True)
        for remedy in args.remedies.split(","):
            for lam in (float(v) for v in args.lams.split(",")):
                r = run(name, lam, remedy, data)
                results.append(r)
                a, b = r["steps"][0], r["steps"][-1]
                ratio = b["grad_match"] / b["grad_ce"] if b["grad_ce"] > 0 else float("inf")
                print(f"{name:<13} {remedy:<32} {lam:>5} {100 * r['acc']:5.1f}% {r['acc'] / base['acc']:7.2f} "
                      f"{a['spread']:7.3g} -> {b['spread']:7.3g} {b['dead']:8.2f} {ratio:20.3g}  "
                      f"{'collapse seen' if r['watch'] else ''}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    from itra_tune import cli

    raise SystemExit(cli.run("python -m benchmarks.collapse", main))
