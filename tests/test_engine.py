"""The engine learns, is deterministic on CPU, resumes bit-for-bit, and stops on divergence."""

from __future__ import annotations

import pytest
import torch

from itra_tune import engine, models
from itra_tune.config import ConfigError

METRIC_KEYS = {"train_ce", "val_acc", "val_ce", "test_acc", "test_ce", "match_loss", "compactness", "epoch"}


@pytest.mark.parametrize("loss", ["itra_c", "itra", "ce", "lsr", "center"])
def test_two_epochs_on_synthetic_beat_chance(tiny_config, loss):
    lam = 0.05 if loss == "center" else 0.5  # the paper's center-loss weights are 0.05-0.1
    result = engine.fit(tiny_config(**{"loss.name": loss, "loss.lam": lam}))
    assert len(result.history) == 2
    assert METRIC_KEYS <= set(result.history[-1])
    assert result.history[-1]["val_acc"] > 0.5  # 10 classes: chance is 0.1
    assert result.history[-1]["test_acc"] > 0.5
    if loss.startswith("itra"):
        assert result.history[-1]["match_loss"] > 0
    assert result.best["val_acc"] == max(r["val_acc"] for r in result.history)


def test_split_pairing_trains(tiny_config):
    result = engine.fit(tiny_config(**{"data.pairing": "split"}))
    assert result.history[-1]["val_acc"] > 0.5 and result.history[-1]["match_loss"] > 0


def test_same_seed_gives_identical_metrics_and_leaves_global_rng_alone(tiny_config):
    cfg = tiny_config(**{"model.name": "small_cnn"})
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = engine.fit(cfg).history
    assert torch.equal(torch.get_rng_state(), before)
    b = engine.fit(cfg).history
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]
    assert strip(a) == strip(b)
    c = engine.fit(tiny_config(**{"model.name": "small_cnn", "seed": 1})).history
    assert strip(a) != strip(c)


def test_resume_continues_bit_for_bit(tiny_config):
    cfg = tiny_config(**{"train.epochs": 3})
    full = engine.fit(cfg).history
    saved = {}

    def keep_first(metrics, state):
        if metrics["epoch"] == 1:
            saved.update(torch.utils._pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, state))

    engine.fit(cfg, report=keep_first)
    resumed = engine.fit(cfg, resume=saved).history
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]
    assert strip(resumed) == strip(full)


@pytest.mark.parametrize("schedule", ["none", "cosine", "linear"])
def test_a_checkpoint_resumed_under_mutated_values_trains_on_with_them(tiny_config, schedule):
    # population based training hands a trial another's checkpoint with mutated lambda, rate and weight decay
    from itra_tune import config

    cfg = tiny_config(**{"train.epochs": 4, "loss.lam": 0.5, "optim.lr": 0.05, "optim.schedule": schedule,
                         "loss.form": "guarded"})  # lambda as set at every step (the default gates it by CE)
    saved = {}

    def keep_first(metrics, state):
        if metrics["epoch"] == 1:
            saved.update(torch.utils._pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, state))

    plain = engine.fit(cfg, report=keep_first).history
    copy = lambda: torch.utils._pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, saved)  # noqa: E731
    mutated = config.override(cfg, {"loss.lam": 2.0, "optim.lr": 0.01, "optim.weight_decay": 0.0})
    rows = engine.fit(mutated, resume=copy()).history[1:]
    for row in rows:  # the loss after the restore weighs the matching term with the mutated lambda
        assert row["train_loss"] == pytest.approx(row["train_ce"] + 2.0 * row["match_loss"], rel=1e-5)
    for old, new in zip(plain[1:], rows):  # the schedule goes on from where it was, scaled to the new peak rate
        assert new["lr"] == pytest.approx(old["lr"] * 0.01 / 0.05)
    unchanged = engine.fit(cfg, resume=copy()).history[1:]
    assert [r["train_loss"] for r in unchanged] == [r["train_loss"] for r in plain[1:]]


@pytest.mark.parametrize("pairing", ["independent", "detached", "split", "memory"])
def test_lambda_zero_trains_as_cross_entropy_and_draws_no_second_batch(tiny_config, pairing, monkeypatch):
    # a search's lambda = 0 trials: the same figures as loss.name=ce, without drawing or matching an S2
    from itra_tune import losses

    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time"} for r in rows]  # noqa: E731
    ce = engine.fit(tiny_config(**{"loss.name": "ce", "data.pairing": pairing, "model.name": "small_cnn"})).history
    matched = []
    monkeypatch.setattr(losses.ITRA, "match", lambda self, *a, **k: matched.append(1))
    zero = engine.fit(tiny_config(**{"loss.lam": 0.0, "data.pairing": pairing, "model.name": "small_cnn"}))
    assert strip(zero.history) == strip(ce) and not matched
    assert all(r["match_loss"] == 0 for r in zero.history)


def test_a_lambda_zero_checkpoint_resumes_with_lambda_above_zero(tiny_config):
    # population based training can mutate lambda from 0: the S2 stream starts from its restored generator
    from itra_tune import config

    cfg = tiny_config(**{"train.epochs": 3, "loss.lam": 0.0})
    saved = {}

    def keep_first(metrics, state):
        if metrics["epoch"] == 1:
            saved.update(torch.utils._pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, state))

    engine.fit(cfg, report=keep_first)
    rows = engine.fit(config.override(cfg, {"loss.lam": 0.5}), resume=saved).history[1:]
    assert len(rows) == 2 and all(r["match_loss"] > 0 for r in rows)


def test_divergence_raises(tiny_config):
    with pytest.raises(engine.Diverged, match="nan|inf"):
        engine.fit(tiny_config(**{"optim.lr": 1e12, "optim.momentum": 0.0}))


def test_lr_schedule_shapes():
    from itra_tune.config import OptimConfig

    cos = schedule_factors(OptimConfig(schedule="cosine", warmup_epochs=2), epochs=10)
    assert cos[0] == pytest.approx(0.1) and cos[2] == 1.0 and cos[6] == pytest.approx(0.5) and cos[9] > 0
    step = schedule_factors(OptimConfig(schedule="step", milestones=(3, 6), gamma=0.1), epochs=10)
    assert [step[e] for e in (0, 2, 3, 5, 6, 9)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert schedule_factors(OptimConfig(schedule="none", warmup_epochs=1), epochs=3) == pytest.approx([0.1, 1, 1, 1])


def schedule_factors(cfg, epochs, steps_per_epoch=1):
    """The multiplier of the peak rate at each step (per-step schedules) or epoch (the others)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule, per_step = engine.build_schedule(cfg, opt, epochs, steps_per_epoch)
    factors = []
    for _ in range(epochs * steps_per_epoch if per_step else epochs):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return factors + [opt.param_groups[0]["lr"]]


def test_compactness_is_lower_for_tighter_classes():
    class Identity(torch.nn.Module):
        def features(self, x):
            return x

    y = torch.arange(4).repeat(32)
    centers = 5 * torch.eye(4)[y]
    g = torch.Generator().manual_seed(0)
    tight = engine.compactness(Identity(), centers + 0.1 * torch.randn(128, 4, generator=g), y)
    loose = engine.compactness(Identity(), centers + 2.0 * torch.randn(128, 4, generator=g), y)
    assert tight < 0.1 < loose < 1.0


def test_unknown_device_is_bad_input(tiny_config):
    with pytest.raises(ConfigError, match="unknown device"):
        engine.fit(tiny_config(device="tpu"))


def test_evaluation_gives_the_mean_ce_with_its_standard_error_over_the_examples(tiny_config):
    # val_ce_se: how precisely one validation split measures the CE, the per-example CE's spread over sqrt(n)
    from itra_tune import data as data_mod

    cfg = tiny_config(**{"model.name": "small_cnn", "train.epochs": 1, "data.val_fraction": 0.2})
    result = engine.fit(cfg)
    d = data_mod.build(cfg.data, torch.device("cpu"), cfg.seed, paired=False)
    model = result.model.eval()
    with torch.no_grad():
        per = torch.cat([torch.nn.functional.cross_entropy(model(x), y, reduction="none") for x, y in d.val]).double()
    figures = engine.evaluate(model, d.val, torch.device("cpu"))
    assert figures.ce == pytest.approx(per.mean().item(), rel=1e-5)
    assert figures.ce_se == pytest.approx((per.std() / per.numel() ** 0.5).item(), rel=1e-4)
    assert 0 < figures.ce_se < figures.ce
    assert all(r["val_ce_se"] > 0 for r in result.history)  # every epoch reports it beside val_ce


def test_compactness_from_the_test_pass_equals_its_own_pass(tiny_config):
    # the engine takes the compactness sample's features from the test evaluation's forward pass
    from itra_tune import data as data_mod

    cfg = tiny_config(**{"model.name": "small_cnn", "train.epochs": 1})
    model = engine.fit(cfg).model
    d = data_mod.build(cfg.data, torch.device("cpu"), cfg.seed, paired=False)
    x, y = d.sample("test", 2 * cfg.train.compactness_samples)
    acc, ce, se, h = engine.evaluate(model, d.test, torch.device("cpu"),
                                     keep=d.sample_index("test", 2 * cfg.train.compactness_samples))
    assert (acc, ce, se, None) == engine.evaluate(model, d.test, torch.device("cpu"))
    torch.testing.assert_close(h, model.eval().features(x))
    assert engine.compactness(model, None, y, features=h) == pytest.approx(engine.compactness(model, x, y))


def test_a_run_keeps_the_weights_of_every_epoch_it_may_still_hand_over(tiny_config, tmp_path):
    # under one_se the epoch handed over depends on the best accuracy still to come: at every epoch the checkpoint
    # holds that epoch's weights, and at the end best.pt's weights give exactly the figures the rule chose by
    from itra_tune import checkpoint, production, selection
    from itra_tune import data as data_mod

    cfg = tiny_config(**{"train.epochs": 10, "data.val_fraction": 0.2, "data.subset": 320, "optim.lr": 0.1,
                         "train.threads": 1})
    assert cfg.select.rule == "one_se"
    states = []
    result = engine.fit(cfg, report=lambda metrics, state: states.append({**state, "history": list(state["history"])}))
    for state in states:
        chosen = selection.handed_over(state["history"], cfg.select)
        assert engine.weights_at(state, int(chosen["epoch"])) is not None, chosen["epoch"]
        assert set(state["kept"]) <= set(selection.contenders(state["history"], cfg.select))
    d = data_mod.build(cfg.data, torch.device("cpu"), cfg.seed, paired=False)
    assert all(r["val_count"] == engine.examples(d.val) > 0 for r in result.history)
    assert result.best is selection.best(result.history, cfg.select)
    assert result.best["epoch"] < cfg.train.epochs  # an earlier epoch: best.pt's weights are ones the run kept

    production.train(cfg, out_dir=tmp_path / "run")
    best = checkpoint.load(tmp_path / "run" / "best.pt")
    assert best["metrics"]["epoch"] == result.best["epoch"]
    model = models.build(cfg.model.name, d.num_classes, d.input_shape)
    model.load_state_dict(best["model"])
    assert engine.evaluate(model, d.val, torch.device("cpu"))[:3] == \
        (result.best["val_acc"], result.best["val_ce"], result.best["val_ce_se"])


def test_a_search_checks_the_device_name_on_its_driver_and_the_trial_opens_it(tiny_config):
    """A driver without a GPU searches a GPU cluster with device: cuda; a name torch does not know is refused."""
    cuda = tiny_config(device="cuda")
    engine.check(cuda, here=False)  # the trials open it where they run
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            engine.check(cuda)
    for here in (True, False):
        with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
            engine.check(tiny_config(device="gpu0"), here=here)
