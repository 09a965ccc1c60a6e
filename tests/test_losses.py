"""Losses: lambda = 0 is plain CE, LSR is torch's label smoothing, center loss pulls centers to class means."""

from __future__ import annotations

import linecache
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import itra_tune
from itra_tune import engine, losses, mmd, models
from itra_tune.config import ConfigError, LossConfig


def _model_and_batches(seed: int = 0):
    torch.manual_seed(seed)
    model = models.build("mlp", 4, (1, 8, 8))
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(16, 1, 8, 8, generator=g), torch.randn(16, 1, 8, 8, generator=g)
    y1, y2 = torch.randint(0, 4, (16,), generator=g), torch.randint(0, 4, (16,), generator=g)
    return model, x1, y1, x2, y2


@pytest.mark.parametrize("name", ["itra", "itra_c"])
def test_lambda_zero_equals_cross_entropy_in_value_and_gradient(name):
    model, x1, y1, x2, y2 = _model_and_batches()
    loss = losses.build(LossConfig(name=name, lam=0.0), 4, model.feature_dim)
    h = model.features(torch.cat([x1, x2]))
    parts = loss(model.head(h[:16]), y1, h[:16], h[16:], y2)
    assert parts.match.item() > 0  # the matching term is computed and logged, only not weighted
    grads = torch.autograd.grad(parts.total, list(model.parameters()))

    ce = F.cross_entropy(model(x1), y1)
    ce_grads = torch.autograd.grad(ce, list(model.parameters()))
    assert parts.total.item() == pytest.approx(ce.item(), rel=1e-6)
    for a, b in zip(grads, ce_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["itra", "itra_c"])
def test_second_batch_never_enters_cross_entropy(name):
    model, x1, y1, x2, y2 = _model_and_batches(1)
    loss = losses.build(LossConfig(name=name, lam=0.7, form="guarded"), 4, model.feature_dim)  # lambda ungated
    h = model.features(torch.cat([x1, x2]))
    parts = loss(model.head(h[:16]), y1, h[:16], h[16:], y2)
    assert parts.ce.item() == pytest.approx(F.cross_entropy(model(x1), y1).item(), rel=1e-6)
    assert parts.total.item() == pytest.approx(parts.ce.item() + 0.7 * parts.match.item(), rel=1e-6)


def test_lsr_equals_torch_label_smoothing():
    logits, y = torch.randn(10, 5), torch.randint(0, 5, (10,))
    parts = losses.build(LossConfig(name="lsr", eps=0.2), 5, 3)(logits, y, torch.randn(10, 3))
    assert parts.total.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.2).item())
    assert losses.build(LossConfig(name="ce"), 5, 3)(logits, y, None).total.item() == pytest.approx(
        F.cross_entropy(logits, y).item())


def test_center_loss_moves_centers_toward_class_means():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(20)  # 60 examples, 3 classes
    h = torch.randn(60, 4, generator=g) + 3.0 * torch.eye(3, 4)[y]  # class k centred near 3 e_k
    means = torch.stack([h[y == k].mean(0) for k in range(3)])
    loss = losses.build(LossConfig(name="center", lam=0.1, center_lr=0.5), 3, 4)
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    logits = torch.zeros(60, 3)
    gaps = []
    for _ in range(20):
        gaps.append((loss.centers.detach() - means).norm(dim=1).max().item())
        parts = loss(logits, y, h)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
    assert all(b < a for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.05 * gaps[0]
    before = loss.centers.detach().clone()
    value = loss(logits, y, h).center.item()
    assert value == pytest.approx(0.5 * (h - before[y]).pow(2).sum(1).mean().item(), rel=1e-6)


def test_center_loss_pulls_features_with_weight_lambda():
    h = torch.randn(6, 2, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = losses.build(LossConfig(name="center", lam=0.3), 3, 2)
    (g,) = torch.autograd.grad(loss(torch.zeros(6, 3), y, h).total, h)
    torch.testing.assert_close(g, 0.3 * (h - loss.centers[y]).detach() / 6)


def test_unknown_and_negative():
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        losses.build(LossConfig(name="focal"), 3, 2)
    with pytest.raises(ConfigError, match="cannot be negative"):
        losses.ITRA(3, lam=-0.1)


def test_a_smoothed_bandwidth_follows_the_batches_slowly_and_one_keeps_the_first():
    from itra_tune import mmd

    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 3, generator=g) * scale, torch.randn(8, 3, generator=g) * scale)
               for scale in (1.0, 0.1)]  # the features shrink 10x, as in a collapse
    y = torch.arange(8) % 2
    first, second = (mmd.batch_bandwidth(h1, h2) for h1, h2 in batches)
    for momentum, expected in ((1.0, first), (0.5, 0.5 * first + 0.5 * second)):
        loss = losses.ITRA(2, lam=1.0, sigma_ema=momentum, form="paper")
        for h1, h2 in batches:
            parts = loss(torch.zeros(8, 2), y, h1, h2, y)
        torch.testing.assert_close(loss.sigma_avg, expected)
        torch.testing.assert_close(parts.match, mmd.mmd(*batches[1], "fixed", float(expected)))
        again = losses.ITRA(2, lam=1.0, sigma_ema=momentum, form="paper")
        again.load_state_dict(loss.state_dict())
        torch.testing.assert_close(again.sigma_avg, loss.sigma_avg)
    # the paper's form takes each batch's own bandwidth: the shrunk batch's match stays scale-free
    paper = losses.ITRA(2, lam=1.0, form="paper")
    torch.testing.assert_close(paper(torch.zeros(8, 2), y, *batches[1], y).match,
                               mmd.mmd(*batches[1], "fixed", float(second)))


def test_lambda_warms_up_linearly_over_its_steps_and_resumes_its_count():
    g = torch.Generator().manual_seed(6)
    h1, h2 = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    y = torch.arange(8) % 2
    loss = losses.ITRA(2, lam=0.8, lam_warmup_steps=4, form="guarded")  # at chance: the default gates lambda
    weights = []
    for _ in range(6):
        parts = loss(torch.zeros(8, 2), y, h1, h2, y)
        weights.append(((parts.total - parts.ce) / parts.match).item())
    assert weights == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    resumed = losses.ITRA(2, lam=0.8, lam_warmup_steps=4, form="guarded")
    resumed.load_state_dict(resumed.state_dict() | {"_extra_state": {"steps": 2}})
    parts = resumed(torch.zeros(8, 2), y, h1, h2, y)
    assert ((parts.total - parts.ce) / parts.match).item() == pytest.approx(0.6)


def test_the_guarded_form_is_scale_invariant_at_chance_and_the_papers_once_learned():
    g = torch.Generator().manual_seed(12)
    h1 = torch.randn(16, 6, generator=g, requires_grad=True)
    h2 = torch.randn(16, 6, generator=g, requires_grad=True)
    y = torch.arange(16) % 4
    chance, learned = torch.zeros(16, 4), 20.0 * F.one_hot(y, 4).float()  # CE ln 4, and about 0

    def radial(form, logits):
        parts = losses.ITRA(4, lam=1.0, class_conditional=True, form=form)(logits, y, h1, h2, y)
        grads = torch.autograd.grad(parts.match, [h1, h2])
        return sum((gr * h).sum() for gr, h in zip(grads, (h1, h2))).item(), parts.match

    paper, value = radial("paper", chance)
    assert paper > 1e-3
    at_chance, value_guarded = radial("guarded", chance)
    assert abs(at_chance) < 1e-5 and torch.equal(value_guarded, value)
    assert radial("guarded", learned)[0] == pytest.approx(paper, rel=1e-5)
    assert abs(radial("scale_invariant", learned)[0]) < 1e-5


@pytest.mark.parametrize("form", ["paper", "guarded"])
def test_the_engine_ends_a_collapsing_trial_and_the_default_form_does_not_collapse(tiny_config, form):
    from itra_tune import engine

    cfg = tiny_config(**{"loss.form": form, "loss.lam": 2.0})  # the engine's mlp: no normalization
    if form == "paper":
        with pytest.raises(engine.Collapsed, match=r"collapsed: .* stays at chance .*form paper"):
            engine.fit(cfg)
    else:
        assert engine.fit(cfg).history[-1]["val_acc"] > 0.6  # measured 0.92; chance is 0.1


def test_the_watch_resumes_from_the_losss_state():
    loss = losses.ITRA(3, lam=1.0)
    g = torch.Generator().manual_seed(13)
    y = torch.arange(8) % 3
    for _ in range(3):
        loss(torch.zeros(8, 3), y, torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), y)
    resumed = losses.ITRA(3, lam=1.0)
    resumed.load_state_dict(loss.state_dict())
    assert resumed.watch.state_dict() == pytest.approx(loss.watch.state_dict())
    assert resumed.watch.steps == 3


def test_an_unknown_form_is_one_line_naming_the_choices():
    from itra_tune import config

    with pytest.raises(ConfigError, match="unknown form 'exact'; choose one of gated, guarded, scale_invariant, paper"):
        losses.ITRA(3, lam=0.5, form="exact")
    with pytest.raises(ConfigError, match=r"loss.form unknown form 'exact'"):
        config.from_dict({"loss": {"form": "exact"}}, "my.yaml")


def test_the_gated_form_holds_lambda_back_at_chance_and_lets_it_in_as_cross_entropy_learns():
    g = torch.Generator().manual_seed(14)
    h1, h2 = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    y = torch.arange(16) % 4
    ln_k = math.log(4)

    def weight(ce_target):  # logits whose CE is ce_target: a uniform mix of chance and a sure answer
        p = math.exp(-ce_target)  # the probability of the right class
        rest = (1 - p) / 3
        logits = torch.log(torch.full((16, 4), rest)).scatter(1, y[:, None], math.log(p))
        parts = losses.ITRA(4, lam=0.8, class_conditional=True)(logits, y, h1, h2, y)  # the default form
        assert parts.ce.item() == pytest.approx(ce_target, rel=1e-4) and parts.match > 0
        return ((parts.total - parts.ce) / parts.match).item()

    assert weight(ln_k) == 0.0  # at chance: cross-entropy alone
    assert weight(0.7 * ln_k) == pytest.approx(0.8 * 0.5, rel=1e-3)  # half-way between 0.9 and 0.5 ln K
    assert weight(0.3 * ln_k) == pytest.approx(0.8)  # learned: the paper's lambda


def _aligning_run(form, on_collapse="warn", steps=400):
    """A LayerNorm'd encoder of random inputs whose features grow as they align (as a ViT's did under AdamW); its
    classifier stays at chance. Returns the loss, once it has seen a collapse or after ``steps`` steps."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16, elementwise_affine=False))
    loss = itra_tune.ITRALoss(4, lam=1.0, class_conditional=False, form=form, on_collapse=on_collapse)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    y = torch.arange(64) % 4
    for step in range(steps):
        h = net(torch.randn(64, 8)) * (1 + step / 10)  # every example's features as large as ever, and growing
        parts = loss(torch.zeros(32, 4), y[:32], h[:32], h[32:], y[32:])  # the caller's line
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        if loss.collapse:
            break
    return loss, net


def _spread_to_size(net):
    h = net(torch.randn(64, 8)).detach()
    return (mmd.mean_sq_dist(h).sqrt() / h.pow(2).sum(1).mean().sqrt()).item()


def test_the_watch_sees_features_that_stay_large_but_move_to_one_point_and_warns_at_the_callers_line():
    with pytest.warns(RuntimeWarning, match="collapsed in direction: every example's features move to one point") \
            as seen:
        loss, net = _aligning_run("paper")
    assert seen[0].filename == __file__  # the warning points at the user's call, not into the library
    assert linecache.getline(__file__, seen[0].lineno).strip().endswith("# the caller's line")
    spread = float(re.search(r"their spread (\S+) is", loss.collapse)[1])
    assert spread > 0.2 * loss.watch.peak[0]  # far from 5% of its peak: a watch of the spread alone misses this
    assert _spread_to_size(net) < 0.1
    with pytest.raises(itra_tune.CollapseError, match="collapsed in direction"):
        _aligning_run("paper", on_collapse="raise")
    assert issubclass(engine.Collapsed, itra_tune.CollapseError)  # a trial's collapse is caught the same way


def test_the_default_form_does_not_pull_features_together_while_the_classifier_is_at_chance():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no collapse warning
        loss, net = _aligning_run("gated", steps=300)
    assert loss.collapse is None
    assert _spread_to_size(net) > 1.0  # as at the start (1.3): the features did not move together


@pytest.mark.parametrize("pairing,settled", [("independent", 1), pytest.param("memory", 6, marks=pytest.mark.slow)])
def test_a_compiled_training_step_with_the_loss_inside_stops_recompiling_and_breaks_only_at_the_bookkeeping(
        pairing, settled):
    # benchmarks/compile.py measures the same with inductor; Dynamo's graphs and guards are the backend's input
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    from benchmarks.compile import batches, make, train

    torch._dynamo.reset()
    counters.clear()
    step, opt = make(pairing)
    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter)
    data = batches(45)  # past the watch's host reads at steps 20 and 40
    train(compiled, opt, data[:settled])
    graphs = counter.frame_count
    train(compiled, opt, data[settled:])
    assert counter.frame_count == graphs  # no recompile after the first step (the memory's: once it is full)
    broken_in = {re.search(r"<function ([\w.]+) at", k).group(1) for k in counters["graph_break"]}
    assert broken_in <= {"ITRA._observe", "ITRA._count", "FeatureMemory.contents", "FeatureMemory.push"}, \
        counters["graph_break"]  # no break in the matching loss (bincount's was one)
