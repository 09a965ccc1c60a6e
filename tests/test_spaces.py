"""Every shipped space loads and converts to an Optuna space; bad space files fail with file and key."""

from __future__ import annotations

import optuna
import pytest
import yaml

from itra_tune import spaces
from itra_tune.config import ConfigError
from itra_tune.search import method_space
from itra_tune.search.trainable import trial_config
from itra_tune.search.tuner import DefineByRun

SHIPPED = sorted(p.stem for p in spaces.SPACES_DIR.glob("*.yaml"))


def test_the_paper_rows_and_demo_are_shipped():
    expected = {"demo", "kmnist", "fmnist", "cifar10", "stl10", "cifar100", "cifar100_resnet101", "imagenet_resnet18"}
    assert expected <= set(SHIPPED)
    assert {"cifar10_vgg13", "cifar10_mobilenet_v2", "stl10_vgg13", "cifar100_mobilenet_v2"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_space_loads_and_samples_valid_configurations(name):
    space = spaces.load(name)
    keys = {p.key for p in space.params}
    assert {"loss.lam", "data.batch_size", "loss.bandwidth"} <= keys
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        DefineByRun(space.params)(trial)
        cfg = trial_config({"base": space.base, **trial.params})
        assert cfg.loss.lam == trial.params["loss.lam"]
        assert cfg.data.batch_size == trial.params["data.batch_size"]
    if name != "demo":
        assert "Table" in spaces.resolve(name).read_text().splitlines()[0]  # quotes the paper's row


def test_method_spaces_tune_their_own_knob():
    space = spaces.load("demo")
    keys = lambda m: {p.key for p in method_space(space, m).params}
    assert "loss.eps" in keys("lsr") and "loss.lam" not in keys("lsr")
    assert "loss.lam" in keys("center") and "loss.bandwidth" not in keys("center")
    assert not any(k.startswith("loss.") for k in keys("ce"))
    assert {"loss.lam", "loss.bandwidth"} <= keys("itra_c")
    assert all("optim.lr" in keys(m) for m in ("ce", "lsr", "center", "itra_c"))


@pytest.mark.parametrize(("change", "message"), [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"search": {"loss.lam": {"type": "float", "low": 1.0, "high": 0.5}}}, "empty range"),
    ({"search": {"loss.lam": {"type": "float", "low": -1.0, "high": 0.5}}}, "cannot be negative"),
    ({"search": {"loss.lamb": {"type": "float", "low": 0.1, "high": 0.5}}},
     "search.loss.lamb: not a configuration key"),
    ({"search": {"loss.lam": {"type": "gaussian"}}}, "type must be one of"),
    ({"search": {"data.batch_size": {"type": "categorical", "choices": []}}}, "non-empty list"),
    ({"budget": {"num_samples": "many"}}, "budget.num_samples must be int"),
    ({"scheduler": {"name": "bohb"}}, "scheduler.name must be one of"),
    ({"scheduler": {"name": "asha", "grace_fraction": 1.5}}, "grace_fraction must be in \\(0, 1\\]"),
    ({"scheduler": {"name": "asha", "grace_fraction": 0.3, "grace_period": 2}}, "not both"),
    ({"metric": "train_acc"}, "metric 'train_acc' cannot select"),
    ({"metric": "test_acc"}, "metric 'test_acc' cannot select.*never selected on"),
    ({"base": {"select": {"metric": "val_acc"}}}, "base.select.metric is 'val_acc' but the space's metric is 'val_ce'"),
    ({"base": {"select": {"epoch": 2}}}, "base.select.epoch is what a search writes"),
])
def test_bad_space_files_name_file_and_key(space_file, change, message):
    path = space_file(**change)
    with pytest.raises(ConfigError, match=message) as e:
        spaces.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_model_option_set_in_base_is_searchable_and_reaches_the_trial(space_file):
    base = {"data": {"name": "synthetic", "batch_size": 32, "subset": 640},
            "model": {"name": "timm:vit_tiny_patch16_224", "options": {"patch_size": 4, "drop_path_rate": 0.0}},
            "loss": {"name": "itra_c", "lam": 0.5}, "train": {"epochs": 1}}
    space = spaces.load(space_file(base=base, search={
        "model.options.drop_path_rate": {"type": "float", "low": 0.0, "high": 0.2}}))
    assert [p.key for p in space.params] == ["model.options.drop_path_rate"]
    cfg = trial_config({"base": space.base, "model.options.drop_path_rate": 0.15})
    assert cfg.model.options == {"patch_size": 4, "drop_path_rate": 0.15}
    assert cfg.flat()["model.options.patch_size"] == 4  # as MLflow records a trial's parameters


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown space 'cifar1000'.*cifar100"):
        spaces.load("cifar1000")


def test_malformed_yaml(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("base: {data: [\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        spaces.load(p)
    p.write_text(yaml.safe_dump({"base": {"loss": {"lam": "x"}}}))
    with pytest.raises(ConfigError, match="loss.lam must be float"):
        spaces.load(p)
