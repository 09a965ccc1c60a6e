"""A GPU check that needs nothing but PyTorch: one command, one table.

    python -m benchmarks.gpu_check                          # on a GPU box, from the repository root (< 8 min, H100)
    python -m benchmarks.gpu_check --device cpu --tiny      # the CPU fallback the tests run (one thread)

Imports torch, torchvision, transformers, numpy and pyyaml only (through itra_tune's engine, models and losses):
no Ray, Optuna or MLflow, no network, no dataset on disk. It measures, side by side in one run:

1. a training step of CE and of ITRA-c in each pairing (ResNet-18 at 32x32, batch 128, bf16 autocast and
   channels_last on CUDA), as ratios to the CE step;
2. the class-conditional MMD, vectorized against the per-class loop, at K = 100 and 1000;
3. seconds per epoch over a CIFAR-100-shaped training set (50,000 synthetic 32x32 images held on the device),
   CE and ITRA-c, with and without ``torch.compile``;
4. the throughput of 4 training processes sharing the device against 1 (what a 0.25-GPU trial buys);
5. bf16 against fp32: the losses of 20 steps from the same weights and batches, which should agree to within
   ``BF16_TOLERANCE`` (relative).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from benchmarks.bench import interleaved, sync
from benchmarks.reference import class_conditional_mmd_loop
from itra_tune import engine, losses, mmd, models
from itra_tune.config import LossConfig
from itra_tune.data.pairs import Step

BF16_TOLERANCE = 0.05  # bf16 keeps ~3 significant digits; 20 steps of SGD drift a little further
CLASSES = 100


@dataclass(frozen=True)
class Sizes:
    batch: int  # m1 = m2
    reps: int  # timed rounds per measurement
    train_images: int  # the epoch's training set
    processes: int  # processes sharing the device
    process_steps: int  # steps each process times
    compile: bool  # include torch.compile rows
    side: int = 32  # image height and width
    mmd_rows: int = 256  # m1 = m2 of the MMD comparison
    bf16_steps: int = 20


FULL = Sizes(batch=128, reps=20, train_images=50_000, processes=4, process_steps=60, compile=True)
# the CPU fallback: every part runs, on sizes a 2-core CPU finishes in seconds
TINY = Sizes(batch=4, reps=1, train_images=32, processes=2, process_steps=2, compile=False, side=16, mmd_rows=128,
             bf16_steps=5)


def resnet(device: torch.device, side: int, seed: int = 0) -> models.Classifier:
    torch.manual_seed(seed)
    model = models.build("resnet18", CLASSES, (3, side, side)).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def amp(device: torch.device, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast: on CUDA unless ``enabled`` says otherwise (the bf16 check asks for it on a CPU too)."""
    if enabled if enabled is not None else device.type == "cuda":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def trainer(model: models.Classifier, loss_fn: torch.nn.Module,
            device: torch.device) -> Callable[[Step], torch.Tensor]:
    """One SGD step of ``model`` on a Step; returns the loss, left on the device (no host sync)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(st: Step) -> torch.Tensor:
        with amp(device):
            total = engine.train_step_loss(model, loss_fn, st).total
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return total.detach()

    return step


def images(n: int, side: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, side, side, generator=g).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, CLASSES, (n,), generator=g).to(device)


# --- 1. one step per pairing ----------------------------------------------------------------------------


def step_ratios(device: torch.device, s: Sizes) -> dict[str, float]:
    model = resnet(device, s.side)
    m = s.batch
    x, y = images(2 * m, s.side, device, 1)
    itra = losses.build(LossConfig(name="itra_c", lam=0.6), CLASSES, model.feature_dim)
    memory = losses.build(LossConfig(name="itra_c", lam=0.6), CLASSES, model.feature_dim, memory=4 * m).to(device)
    ce = losses.build(LossConfig(name="ce"), CLASSES, model.feature_dim)
    with torch.no_grad():
        for _ in range(4):  # a full memory, as after the first steps of an epoch
            memory.memory.push(model.features(x[m:]).float(), y[m:])
    run = {name: trainer(model, fn, device) for name, fn in (("ce", ce), ("itra", itra), ("memory", memory))}
    steps = {
        "ce": lambda: run["ce"](Step(x[:m], y[:m], m1=m, ce_rows=m)),
        "independent": lambda: run["itra"](Step(x, y, m1=m, ce_rows=m)),
        "detached": lambda: run["itra"](Step(x[:m], y[:m], m1=m, ce_rows=m, x2=x[m:], y2=y[m:])),
        "memory": lambda: run["memory"](Step(x[:m], y[:m], m1=m, ce_rows=m)),
        "split": lambda: run["itra"](Step(x, y, m1=m, ce_rows=2 * m)),
    }
    return interleaved(steps, s.reps, device)


# --- 2. the class-conditional MMD ------------------------------------------------------------------------


def mmd_speedups(device: torch.device, s: Sizes) -> dict[int, tuple[float, float]]:
    out = {}
    m, dim = s.mmd_rows, 512
    for k in (100, 1000):
        g = torch.Generator().manual_seed(k)
        h1 = torch.randn(m, dim, generator=g).to(device).requires_grad_()
        h2 = torch.randn(m, dim, generator=g).to(device).requires_grad_()
        y1 = torch.randint(0, k, (m,), generator=g).to(device)
        y2 = torch.randint(0, k, (m,), generator=g).to(device)
        args = (h1, y1, h2, y2, k)
        t = interleaved({"vectorized": lambda a=args: mmd.class_conditional_mmd(*a).backward(),
                         "loop": lambda a=args: class_conditional_mmd_loop(*a).backward()}, s.reps, device)
        out[k] = (t["vectorized"], t["loop"])
    return out


# --- 3. an epoch of a CIFAR-100-shaped set on the device ---------------------------------------------------


def epoch_seconds(device: torch.device, s: Sizes, itra: bool, compiled: bool) -> float:
    """Seconds of the second of two epochs (the first warms up, and compiles) over synthetic images."""
    model = resnet(device, s.side)
    features = torch.compile(model.features) if compiled else model.features  # the head and loss run eagerly
    x, y = images(s.train_images, s.side, device, 2)
    m = s.batch
    cfg = LossConfig(name="itra_c", lam=0.6) if itra else LossConfig(name="ce")
    loss_fn = losses.build(cfg, CLASSES, model.feature_dim)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator(device=device).manual_seed(0)

    def one_epoch() -> None:
        first = torch.randperm(len(y), device=device, generator=g)
        second = torch.randperm(len(y), device=device, generator=g)
        for i in range(0, len(y) - m + 1, m):
            idx = torch.cat([first[i:i + m], second[i:i + m]]) if itra else first[i:i + m]
            with amp(device):
                h = features(x[idx])
                parts = loss_fn(model.head(h[:m]), y[idx[:m]], h[:m], h[m:], y[idx[m:]], y1=y[idx[:m]])
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()

    one_epoch()
    sync(device)
    t0 = time.perf_counter()
    one_epoch()
    sync(device)
    return time.perf_counter() - t0


# --- 4. processes sharing the device ---------------------------------------------------------------------


def _worker(rank: int, device: str, s: Sizes, start, results) -> None:
    dev = torch.device(device)
    torch.set_num_threads(1)
    model = resnet(dev, s.side, seed=rank)
    step = trainer(model, losses.build(LossConfig(name="ce"), CLASSES, model.feature_dim), dev)
    x, y = images(s.batch, s.side, dev, rank)
    st = Step(x, y, m1=s.batch, ce_rows=s.batch)
    step(st)  # warm-up
    sync(dev)
    start.wait()
    t0 = time.perf_counter()
    for _ in range(s.process_steps):
        step(st)
    sync(dev)
    results.put(time.perf_counter() - t0)


def shared_throughput(device: torch.device, s: Sizes, processes: int) -> float:
    """Training steps per second of ``processes`` processes, each training its own model on the device."""
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, str(device), s, start, results)) for r in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    [results.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return processes * s.process_steps / wall


# --- 5. bf16 against fp32 ------------------------------------------------------------------------------------


def bf16_agreement(device: torch.device, s: Sizes) -> tuple[list[float], list[float]]:
    """The ITRA-c losses of ``s.bf16_steps`` steps in bf16 autocast and in fp32, same weights and batches."""
    m, steps = s.batch, s.bf16_steps
    x, y = images(2 * m * steps, s.side, device, 3)
    runs = []
    for bf16 in (True, False):
        model = resnet(device, s.side)
        loss_fn = losses.build(LossConfig(name="itra_c", lam=0.6), CLASSES, model.feature_dim)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        values = []
        for i in range(steps):
            xb, yb = x[2 * m * i: 2 * m * (i + 1)], y[2 * m * i: 2 * m * (i + 1)]
            with amp(device, bf16):
                total = engine.train_step_loss(model, loss_fn, Step(xb, yb, m1=m, ce_rows=m)).total
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            values.append(total.item())
        runs.append(values)
    return runs[0], runs[1]


# --- the table ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="small sizes: the CPU fallback")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu --tiny", file=sys.stderr)
        return 2
    s = TINY if args.tiny else FULL
    if device.type == "cpu":  # one thread: two threads beside other work ran a step 24x slower on 2 cores
        torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    t_start = time.perf_counter()
    rows: list[tuple[str, str]] = []

    def row(what: str, measured: str) -> None:
        rows.append((what, measured))
        print(f"  {what}: {measured}", flush=True)  # progress while the table fills

    precision = "bf16, channels_last" if device.type == "cuda" else "fp32"
    t = step_ratios(device, s)
    row(f"training step, ResNet-18 {s.side}x{s.side}, batch {s.batch}, {precision}: CE", f"{t['ce'] * 1e3:.1f} ms")
    for pairing in ("independent", "detached", "memory", "split"):
        row(f"itra_c ({pairing} S2) / ce", f"{t[pairing] / t['ce']:.2f}x ({t[pairing] * 1e3:.1f} ms)")
    for k, (vec, loop) in mmd_speedups(device, s).items():
        row(f"class-conditional MMD, m = {s.mmd_rows}, D = 512, K = {k}: vectorized vs per-class loop",
            f"{vec * 1e3:.2f} vs {loop * 1e3:.2f} ms: {loop / vec:.1f}x")
    for itra in (False, True):
        for compiled in (False, True) if s.compile else (False,):
            sec = epoch_seconds(device, s, itra, compiled)
            row(f"epoch of {s.train_images:,} {s.side}x{s.side} images on the device, {'ITRA-c' if itra else 'CE'}"
                f"{', torch.compile' if compiled else ''}", f"{sec:.2f} s")
    one = shared_throughput(device, s, 1)
    many = shared_throughput(device, s, s.processes)
    row(f"{s.processes} training processes sharing the device vs 1 (CE steps/s in all)",
        f"{many:.1f} vs {one:.1f}: {many / one:.2f}x")
    bf16, fp32 = bf16_agreement(device, s)
    worst = max(abs(a - b) / abs(b) for a, b in zip(bf16, fp32))
    row(f"bf16 vs fp32, ITRA-c loss over {s.bf16_steps} steps: largest relative difference (tolerance "
        f"{BF16_TOLERANCE})",
        f"{worst:.4f} ({'agree' if worst <= BF16_TOLERANCE else 'DISAGREE'}; first {bf16[0]:.4f} vs {fp32[0]:.4f}, "
        f"last {bf16[-1]:.4f} vs {fp32[-1]:.4f})")

    print(f"\n### gpu_check on {name}, torch {torch.__version__}{' (--tiny)' if args.tiny else ''}, "
          f"{time.perf_counter() - t_start:.0f} s\n")
    print("| what | measured |\n|---|---|")
    for what, measured in rows:
        print(f"| {what} | {measured} |")
    return 0 if worst <= BF16_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
