"""torch.compile of a training step with ITRALoss inside: graphs, recompiles, graph breaks and step time.

    PYTHONPATH=. python -m benchmarks.compile [--steps 100] [--backend inductor] [--pairing independent]

One epoch of steps of the README's loop (an MLP on 64-d inputs, batch 64 + 64, ITRA-c) is compiled as one
function, model forward and loss together; Dynamo's counters say how many graphs it made, how often it
recompiled and where it broke the graph, and the step time is measured eager and compiled side by side (after
the compiled function's first steps, alternating rounds).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter

import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import itra_tune


def make(pairing: str) -> tuple:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    net = itra_tune.split_model(model)
    loss_fn = itra_tune.ITRALoss(10, lam=0.5, pairing=pairing)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        if pairing == "memory":
            logits, h = net(x1)
            return loss_fn(logits, y1, h).total
        logits, h = net(torch.cat([x1, x2]))
        n = x1.shape[0]
        return loss_fn(logits[:n], y1, h[:n], h[n:], y2).total

    return step, opt


def batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g),
             torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(steps)]


def train(step, opt, data) -> float:
    start = time.perf_counter()
    for b in data:
        loss = step(*b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / len(data)


def where(reason: str) -> str:
    """A graph break's reason in one line, with the function it was in when Dynamo names one."""
    first = reason.strip().splitlines()[0][:100]
    found = re.search(r"<function ([\w.<>]+) at", reason)
    return f"{first} ({found.group(1)})" if found else first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="an epoch of this many steps (default 100)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--pairing", default="independent", choices=["independent", "detached", "memory"])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of 20 steps, eager and compiled alternating")
    args = p.parse_args()
    torch.set_num_threads(1)

    torch._dynamo.reset()
    counters.clear()
    step, opt = make(args.pairing)
    counter = CompileCounterWithBackend(args.backend)  # counts the graphs handed to the backend
    compiled = torch.compile(step, backend=counter)
    data = batches(args.steps)
    start = time.perf_counter()
    train(compiled, opt, data[:1])
    first = counter.frame_count  # the graphs of one step: one more than its graph breaks
    train(compiled, opt, data[1:])
    epoch = time.perf_counter() - start
    breaks = Counter({where(k): v for k, v in counters["graph_break"].items()})
    print(f"one epoch of {args.steps} steps compiled ({args.backend}, pairing {args.pairing}): {epoch:.1f} s with "
          f"compilation; {first} graphs for the first step, {counter.frame_count - first} compiled after it "
          f"(recompiles)")
    for reason, n in breaks.most_common():
        print(f"  graph break x{n}: {reason}")

    eager_step, eager_opt = make(args.pairing)
    timed = batches(20, seed=1)
    eager, comp = [], []
    for _ in range(args.rounds):
        eager.append(train(eager_step, eager_opt, timed))
        comp.append(train(compiled, opt, timed))
    ratios = sorted(c / e for c, e in zip(comp, eager))
    print(f"step time, median of {args.rounds} rounds of 20: eager {1000 * statistics.median(eager):.2f} ms, "
          f"compiled {1000 * statistics.median(comp):.2f} ms: {statistics.median(ratios):.2f}x "
          f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f})")
    print(f"  graphs compiled after the first step, timed rounds included: {counter.frame_count - first}")


if __name__ == "__main__":
    main()
