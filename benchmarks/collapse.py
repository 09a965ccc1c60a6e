"""Which models the paper's form of ITRA collapses, why, and which remedies prevent it: the README's own loop
(one epoch of Fashion-MNIST, 6,000 training images as raw [0, 1] pixels, batch 64, SGD 0.05 momentum 0.9 or
AdamW 1e-3, ``ITRALoss`` ITRA-c with the median bandwidth) over models with and without normalization before the
features (CNNs, MLPs, timm's ViT-tiny, a small transformer encoder), lambda and remedy by remedy, every run of a
seed from the same weights and batches.

    ITRA_TUNE_DATA=/path/to/data python -m benchmarks.collapse [--models plain_cnn,vit_p7] [--optim adamw] \\
        [--seeds 0,1] [--lams 0.05,0.1,0.5,2] [--remedies paper,"gated (default)"] [--out collapse.json]

Every 10 steps it records, at S1 and S2's features: their spread (root-mean-square distance between them), their
size (root-mean-square norm), the rows' mean cosine similarity, the fraction of dead features (zero on every
example of the batch), the median bandwidth sigma, and each term's gradient norm at the features and over the
model's parameters; at the end, accuracy on 2,000 test images. The ViT models need timm (``pip install timm``).
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


def vit(patch: int, depth: int = 12) -> Callable[[], nn.Module]:
    def build() -> nn.Module:  # timm's ViT-tiny on 28x28 grey images: LayerNorm before the features, attention
        import timm
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=patch,
                                 in_chans=1, num_classes=10, depth=depth)
    return build


class SmallEncoder(nn.Module):
    """A small transformer encoder: 7x7 patches, 2 pre-norm layers of width 64, a final LayerNorm, mean pool."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 64, 7, stride=7)
        self.pos = nn.Parameter(torch.zeros(1, 16, 64))
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, 16, 64)
        return self.head(self.norm(self.encoder(tokens)).mean(1))


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
    "vit_p4": vit(4),  # timm ViT-tiny, 49 patches: LayerNorm, attention
    "vit_p7": vit(7),  # timm ViT-tiny, 16 patches
    "vit_p7_d6": vit(7, depth=6),  # its first 6 blocks of 12: half the time; the test's fast run of the study
    "encoder": SmallEncoder,  # a small transformer encoder: LayerNorm, attention
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
    "guarded": {"loss": {"form": "guarded"}},
    "scale_invariant": {"loss": {"form": "scale_invariant"}},
    "gated (default)": {"loss": {"form": "gated"}},
    "balanced 1": {"loss": {"form": "guarded"}, "balance": 1.0},
    "balanced 0.25": {"loss": {"form": "guarded"}, "balance": 0.25},
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


OPTIMIZERS: dict[str, Callable[[list[Tensor]], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),  # the study's first protocol
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),  # torch's defaults otherwise (weight decay 0.01)
}


def run(model_name: str, lam: float, remedy: str, data: tuple[Tensor, ...], batch: int = 64, seed: int = 0,
        optim: str = "sgd") -> dict[str, Any]:
    """One epoch of the README's loop; the per-step records and the test accuracy."""
    xtr, ytr, xte, yte = data
    spec = REMEDIES[remedy]
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    net = itra_tune.split_model(model)
    loss_fn = itra_tune.ITRALoss(10, lam=lam, **spec["loss"])
    pairing = spec["loss"].get("pairing", "independent")
    transform, hook = spec.get("transform"), spec.get("hook", lambda: None)()
    params = list(model.parameters())
    optimizer = OPTIMIZERS[optim](params)
    g1, g2 = torch.Generator().manual_seed(2 * seed), torch.Generator().manual_seed(2 * seed + 1)
    order1, order2 = torch.randperm(len(xtr), generator=g1), torch.randperm(len(xtr), generator=g2)
    rows, t0 = [], time.perf_counter()
    model.train()
    for i in range(len(xtr) // batch):
        i1, i2 = order1[i * batch:(i + 1) * batch], order2[i * batch:(i + 1) * batch]
        if pairing == "independent":
            logits, h = net(torch.cat([xtr[i1], xtr[i2]]))
            logits, h1, h2 = logits[:batch], h[:batch], h[batch:]
        else:
            logits, h = net(xtr[i1])
            h1 = h
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
        if spec.get("balance") and parts.match.requires_grad:  # the matching gradient at h at most alpha x CE's
            g_ce, g_match = (torch.autograd.grad(t, h, retain_graph=True)[0].norm()
                             for t in (parts.ce, parts.total - parts.ce))
            scale = (spec["balance"] * g_ce / g_match.clamp_min(1e-12)).clamp(max=1.0)
            parts = parts._replace(total=parts.ce + scale * (parts.total - parts.ce))
        if i % STEPS_PER_RECORD == 0:
            rows.append(record(i, h, h1, h2, parts, params))
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = sum((model(xte[j:j + 500]).argmax(1) == yte[j:j + 500]).sum().item()
                  for j in range(0, len(xte), 500)) / len(xte)
    return {"model": model_name, "lam": lam, "remedy": remedy, "seed": seed, "optim": optim, "acc": acc,
            "steps": rows, "watch": loss_fn.collapse, "seconds": time.perf_counter() - t0}


def record(step: int, h: Tensor, h1: Tensor, h2: Tensor, parts: Any, params: list[Tensor]) -> dict[str, float]:
    """The features' spread, mean cosine similarity, dead fraction and bandwidth; each term's gradient norm at the
    features ``h`` (what the network outputs, before any transform) and over the parameters."""
    with torch.no_grad():
        z = torch.cat([h1, h2]).detach().float()
        spread = mmd.mean_sq_dist(z).sqrt().item()
        unit = F.normalize(z, dim=1)
        n = len(z)
        cos = ((unit.sum(0).pow(2).sum() - n) / (n * (n - 1))).item()  # mean over distinct pairs
        dead = (z.abs().amax(0) == 0).float().mean().item()
        norm = z.pow(2).sum(1).mean().sqrt().item()
        sigma = mmd.batch_bandwidth(z[: len(h1)], z[len(h1):]).item()
    weighted = parts.total - parts.ce
    at_h = [h] if h.requires_grad else []
    g_ce = torch.autograd.grad(parts.ce, at_h + params, retain_graph=True, allow_unused=True)
    g_match = torch.autograd.grad(weighted, at_h + params, retain_graph=True, allow_unused=True) \
        if weighted.requires_grad else [None] * len(g_ce)
    k = len(at_h)
    return {"step": step, "spread": spread, "cos": cos, "norm": norm, "dead": dead, "sigma": sigma,
            "grad_ce": _norm(g_ce[k:]), "grad_match": _norm(g_match[k:]), "grad_ce_h": _norm(g_ce[:k]),
            "grad_match_h": _norm(g_match[:k]), "ce": parts.ce.item(), "match": parts.match.item()}


def _norm(grads: Any) -> float:
    sq = [g.float().pow(2).sum() for g in grads if g is not None]
    return math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0


def report(results: list[dict[str, Any]]) -> str:
    """Markdown tables of runs (``--out`` files): per model and optimizer, a row per remedy, a column per lambda,
    each cell the accuracy and its ratio to the same seed's lambda 0, seed by seed; bold where the watch fired."""
    base = {(r["model"], r.get("optim", "sgd"), r.get("seed", 0)): r["acc"] for r in results if r["lam"] == 0}
    cells: dict[tuple[str, str], dict[str, dict[float, list[str]]]] = {}
    for r in results:
        if r["lam"] == 0:
            continue
        key = (r["model"], r.get("optim", "sgd"))
        ratio = r["acc"] / base[(*key, r.get("seed", 0))]
        cell = f"{100 * r['acc']:.1f}% ({ratio:.2f}x)"
        cells.setdefault(key, {}).setdefault(r["remedy"], {}).setdefault(r["lam"], []).append(
            f"**{cell}** collapsed" if r["watch"] else cell)
    out = []
    for (model, optim), rows in cells.items():
        lams = sorted({lam for by_lam in rows.values() for lam in by_lam})
        zero = ", ".join(f"{100 * a:.1f}%" for (m, o, _), a in sorted(base.items()) if (m, o) == (model, optim))
        out += [f"**{model}**, {optim} (λ = 0, seed by seed: {zero})", "",
                "| remedy | " + " | ".join(f"λ {lam:g}" for lam in lams) + " |", "|---" * (len(lams) + 1) + "|"]
        out += [f"| {remedy} | " + " | ".join("; ".join(by_lam.get(lam, ["-"])) for lam in lams) + " |"
                for remedy, by_lam in rows.items()]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.collapse", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="plain_cnn,tanh_cnn,relu_mlp,tanh_mlp,mlp,small_cnn",
                   help=f"comma-separated, of: {', '.join(MODELS)}")
    p.add_argument("--lams", default="0.05,0.1,0.5,2")
    p.add_argument("--remedies", default=",".join(REMEDIES), help="comma-separated names of REMEDIES")
    p.add_argument("--optim", default="sgd", choices=sorted(OPTIMIZERS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds (weights and batches)")
    p.add_argument("--out", help="write every run's records to this JSON file (rewritten after each run)")
    p.add_argument("--report", nargs="+", metavar="JSON", help="print the tables of earlier --out files; run nothing")
    args = p.parse_args(argv)
    if args.report:
        print(report([r for f in args.report for r in json.loads(Path(f).read_text())]))
        return 0
    root = Path(os.environ.get("ITRA_TUNE_DATA", Path.home() / ".cache/itra_tune/data")) / "fashion_mnist"
    if not root.is_dir():
        raise itra_tune.config.ConfigError(f"Fashion-MNIST not found in {root}; set ITRA_TUNE_DATA to the folder "
                                           "that holds fashion_mnist/")
    torch.set_num_threads(1)
    data = fashion_mnist(root)
    results = []
    print(f"{'model':<9} {'optim':<5} {'seed':>4} {'remedy':<26} {'lam':>4} {'acc':>6} {'x lam 0':>7} "
          f"{'spread 0 -> end':>17} {'cos end':>7} {'|g_match|/|g_ce| at h':>21}  watch", flush=True)
    for name in args.models.split(","):
        for seed in (int(v) for v in args.seeds.split(",")):
            base = run(name, 0.0, "paper", data, seed=seed, optim=args.optim)
            results.append(base)
            print(f"{name:<9} {args.optim:<5} {seed:>4} {'(lambda 0: cross-entropy)':<26} {0:>4} "
                  f"{100 * base['acc']:5.1f}%", flush=True)
            for remedy in args.remedies.split(","):
                for lam in (float(v) for v in args.lams.split(",")):
                    r = run(name, lam, remedy, data, seed=seed, optim=args.optim)
                    r["base_acc"] = base["acc"]
                    results.append(r)
                    a, b = r["steps"][0], r["steps"][-1]
                    ratio = b["grad_match_h"] / b["grad_ce_h"] if b["grad_ce_h"] > 0 else float("inf")
                    print(f"{name:<9} {args.optim:<5} {seed:>4} {remedy:<26} {lam:>4} {100 * r['acc']:5.1f}% "
                          f"{r['acc'] / base['acc']:7.2f} {a['spread']:7.3g} -> {b['spread']:7.3g} "
                          f"{b['cos']:7.3f} {ratio:21.3g}  {r['watch'] or ''}", flush=True)
                    if args.out:
                        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    from itra_tune import cli

    raise SystemExit(cli.run("python -m benchmarks.collapse", main))
