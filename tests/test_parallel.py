"""Data-parallel ITRA: 2 gloo workers of m examples train as 1 worker of 2m with the same examples."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from itra_tune import engine, losses, models, parallel
from itra_tune.config import LossConfig
from itra_tune.data.pairs import Step

M, K = 16, 4  # rows per worker, classes


def batch(seed: int = 0) -> Step:
    """A global Step of S1 (2m) and S2 (2m), classes repeated so that every class has pairs in each worker."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * M, 1, 8, 8, generator=g)
    y = torch.arange(4 * M) % K
    return Step(x, y, m1=2 * M, ce_rows=2 * M)


def setup(pairing: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = models.build("mlp", K, (1, 8, 8))  # no BatchNorm
    cfg = LossConfig(name="itra_c", lam=0.7, bandwidth="fixed", sigma=50.0)
    memory = 4 * M if pairing == "memory" else None  # the loss keeps gathered features: N·m per batch
    return model, losses.build(cfg, K, model.feature_dim, memory=memory)


def step_for(pairing: str, step: Step) -> Step:
    if pairing == "detached":
        return Step(step.x[: step.m1], step.y[: step.m1], step.m1, step.m1, step.x[step.m1:], step.y[step.m1:])
    if pairing == "memory":
        return Step(step.x[: step.m1], step.y[: step.m1], step.m1, step.m1)
    return step


def loss_and_grads(model, loss_fn, steps, net=None):
    """The parts of the last of ``steps`` (a memory fills over the first) and its parameter gradients."""
    for step in steps:
        model.zero_grad()
        parts = engine.train_step_loss(model, loss_fn, step, net)
        parts.total.backward()
    return parts, {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(r: int, pairing: str, out: str) -> None:
    # a file store: no port to race other tests for
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/store", rank=r, world_size=2)
    torch.set_num_threads(1)
    model, loss_fn = setup(pairing)
    net = parallel.wrap(model, torch.device("cpu"), sync_batchnorm=False)
    steps = [parallel.shard(step_for(pairing, batch(seed)), r, 2) for seed in range(3)]
    parts, grads = loss_and_grads(model, loss_fn, steps, net)
    torch.save({"total": parts.total.detach(), "ce": parts.ce.detach(), "match": parts.match.detach(),
                "grads": grads}, f"{out}/rank{r}.pt")
    torch.distributed.barrier()  # neither rank tears gloo down while the other still talks to it
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("pairing", ["independent", "detached", "memory"])
def test_two_workers_of_m_match_one_worker_of_2m(tmp_path, pairing):
    model, loss_fn = setup(pairing)
    one, grads = loss_and_grads(model, loss_fn, [step_for(pairing, batch(seed)) for seed in range(3)])
    mp.spawn(_worker, args=(pairing, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert one.match > 0
    for rank in ranks:  # the matching loss is the global batches' on every worker
        torch.testing.assert_close(rank["match"], one.match, rtol=1e-5, atol=1e-6)
    # each worker's CE is its half's; their mean is the CE of the global batch, and so is the loss
    torch.testing.assert_close((ranks[0]["total"] + ranks[1]["total"]) / 2, one.total, rtol=1e-5, atol=1e-6)
    for rank in ranks:  # DistributedDataParallel's averaged gradients are the single worker's
        for name, g in grads.items():
            torch.testing.assert_close(rank["grads"][name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_one_worker_is_the_identity():
    step = batch()
    assert parallel.world() == 1 and parallel.shard(step, 0, 1) is step
    x = torch.randn(3, requires_grad=True)
    assert parallel.gather(x) is x and parallel.mean(x) is x
    assert parallel.wrap(models.build("mlp", K, (1, 8, 8)), torch.device("cpu"), True) is None
