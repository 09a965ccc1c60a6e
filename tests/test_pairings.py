"""The second mini-batch, pairing by pairing (itra_tune.data.pairs with the engine's step and the losses):
lambda = 0 is plain CE, detached sends no gradient through S2, the memory holds the last N batches, resumes
bit for bit, and its class-conditional loss is the per-class loop's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.reference import class_conditional_mmd_loop
from itra_tune import engine, losses, mmd, models
from itra_tune.config import LossConfig
from itra_tune.data import Step
from itra_tune.losses import FeatureMemory

M, K = 16, 4


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = models.build("mlp", K, (1, 8, 8))  # no BatchNorm: one forward of 2m equals two of m
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * M, 1, 8, 8, generator=g)
    y = torch.randint(0, K, (2 * M,), generator=g)
    return model, x, y


def _steps(x, y):
    return {"independent": Step(x, y, m1=M, ce_rows=M), "split": Step(x, y, m1=M, ce_rows=2 * M),
            "detached": Step(x[:M], y[:M], m1=M, ce_rows=M, x2=x[M:], y2=y[M:]),
            "memory": Step(x[:M], y[:M], m1=M, ce_rows=M)}


def _loss(name, lam, pairing, dim, memory_batches=2):
    return losses.build(LossConfig(name=name, lam=lam), K, dim,
                        memory=memory_batches * M if pairing == "memory" else None)


@pytest.mark.parametrize("pairing", ["independent", "split", "detached", "memory"])
@pytest.mark.parametrize("name", ["itra", "itra_c"])
def test_lambda_zero_is_cross_entropy_in_value_and_gradient(pairing, name):
    model, x, y = _setup()
    loss = _loss(name, 0.0, pairing, model.feature_dim)
    step = _steps(x, y)[pairing]
    if pairing == "memory":  # a memory holding one earlier batch, so that the matching term is really there
        with torch.no_grad():
            loss.memory.push(model.features(x[M:]), y[M:])
    parts = engine.train_step_loss(model, loss, step)
    assert parts.match.item() > 0
    grads = torch.autograd.grad(parts.total, list(model.parameters()))
    rows = 2 * M if pairing == "split" else M
    ce = F.cross_entropy(model(x[:rows]), y[:rows])
    assert parts.total.item() == pytest.approx(ce.item(), rel=1e-6)
    for a, b in zip(grads, torch.autograd.grad(ce, list(model.parameters()))):
        torch.testing.assert_close(a, b)


def test_detached_sends_the_matching_gradient_through_s1_only():
    model, x, y = _setup(1)
    loss = losses.build(LossConfig(name="itra_c", lam=0.8, form="paper"), K, model.feature_dim)  # by hand below
    parts = engine.train_step_loss(model, loss, _steps(x, y)["detached"])
    got = torch.autograd.grad(parts.total, list(model.parameters()))
    # by hand: S2's features are constants; CE on S1 plus lambda times the matching loss against them
    h1 = model.features(x[:M])
    h2 = model.features(x[M:]).detach()
    by_hand = F.cross_entropy(model.head(h1), y[:M]) + 0.8 * mmd.class_conditional_mmd(h1, y[:M], h2, y[M:], K)
    for a, b in zip(got, torch.autograd.grad(by_hand, list(model.parameters()))):
        torch.testing.assert_close(a, b)
    # and the paper's pairing, with gradients through S2 as well, gives other gradients
    parts = engine.train_step_loss(model, loss, _steps(x, y)["independent"])
    independent = torch.autograd.grad(parts.total, list(model.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(got, independent))


def test_memory_holds_exactly_the_last_n_batches():
    memory = FeatureMemory(rows=3 * 4, dim=2)
    batches = [(torch.full((4, 2), float(i)), torch.full((4,), i)) for i in range(5)]
    for i, (h, y) in enumerate(batches):
        memory.push(h, y)
        held_h, held_y = memory.contents()
        assert held_h.shape[0] == min(i + 1, 3) * 4
        assert sorted(held_y.unique().tolist()) == list(range(max(0, i - 2), i + 1))
    state = memory.state_dict()
    again = FeatureMemory(rows=12, dim=2)
    again.load_state_dict(state)
    assert (again.filled, again.pos) == (memory.filled, memory.pos)
    assert torch.equal(again.contents()[0], memory.contents()[0])


def test_memory_matches_before_it_remembers_and_starts_with_cross_entropy_alone():
    model, x, y = _setup(2)
    loss = _loss("itra_c", 0.5, "memory", model.feature_dim)
    first = engine.train_step_loss(model, loss, _steps(x, y)["memory"])
    assert first.match.item() == 0.0 and first.total.item() == pytest.approx(first.ce.item())
    assert loss.memory.filled == M


def test_class_conditional_loss_against_the_memory_equals_the_per_class_loop():
    g = torch.Generator().manual_seed(3)
    loss = losses.build(LossConfig(name="itra_c", lam=1.0, form="paper"), 10, 8, memory=4 * M)
    for _ in range(5):  # more batches than the memory holds: it wraps around
        loss.memory.push(torch.randn(M, 8, generator=g), torch.randint(0, 10, (M,), generator=g))
    h1 = torch.randn(M, 8, generator=g, requires_grad=True)
    y1 = torch.randint(0, 10, (M,), generator=g)
    mem_h, mem_y = [t.clone() for t in loss.memory.contents()]
    parts = loss(torch.randn(M, 10, generator=g), y1, h1)
    expected = class_conditional_mmd_loop(h1, y1, mem_h, mem_y, 10)
    torch.testing.assert_close(parts.match, expected)
    (got,) = torch.autograd.grad(parts.match, h1)
    (want,) = torch.autograd.grad(class_conditional_mmd_loop(h1, y1, mem_h, mem_y, 10), h1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("pairing", ["detached", "memory"])
def test_training_resumes_bit_for_bit(tiny_config, pairing):
    cfg = tiny_config(**{"data.pairing": pairing, "data.memory_batches": 3, "train.epochs": 2,
                         "model.name": "small_cnn"})
    full = engine.fit(cfg).history
    saved = {}

    def keep_first(metrics, state):
        if metrics["epoch"] == 1:
            saved.update(torch.load(_roundtrip(state), weights_only=True))

    engine.fit(cfg, report=keep_first)
    resumed = engine.fit(cfg, resume=saved).history
    drop = ("epoch_time",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full]


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf
