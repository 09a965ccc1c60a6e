"""Configuration files: types, unknown keys, dotted overrides, range checks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from itra_tune import config, losses
from itra_tune.config import ConfigError


def test_defaults_round_trip_through_dict():
    cfg = config.Config()
    assert config.from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["loss.lam"] == 0.6


def test_load_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss:\n  name: itra\n  lam: 0.3\noptim:\n  weight_decay: 5e-4\n  milestones: [3, 6]\n")
    cfg = config.load(p, ["loss.lam=0.9", "data.batch_size=32", "loss.sigma=null"])
    assert cfg.loss.name == "itra" and cfg.loss.lam == 0.9 and cfg.data.batch_size == 32
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.milestones == (3, 6)


@pytest.mark.parametrize(("text", "message"), [
    ("loss:\n  lamda: 0.3\n", "unknown key 'loss.lamda'"),
    ("loss:\n  lam: high\n", "loss.lam must be float"),
    ("data:\n  batch_size: 1.5\n", "data.batch_size must be int"),
    ("data:\n  batch_size: 0\n", "data.batch_size must be a positive integer"),
    ("loss:\n  lam: -0.5\n", "loss.lam cannot be negative"),
    ("loss:\n  bandwidth: silverman\n", "unknown bandwidth scheme 'silverman'"),
    ("loss:\n  bandwidth: fixed\n", "loss.sigma is required"),
    ("data: [1, 2]\n", "data must be a mapping"),
    ("loss: {name: itra\n", "malformed YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_files_name_file_and_key(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        config.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        config.apply_overrides({}, ["loss.lam"])
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.yaml")


def test_override_validates():
    with pytest.raises(ConfigError, match="cannot be negative"):
        config.override(config.Config(), {"loss.lam": -1})
    assert config.override(config.Config(), {"loss.lam": 2}).loss.lam == 2.0


def test_the_guides_table_names_every_configuration_key():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "training.md").read_text()
    table = guide.split("A configuration has six sections", 1)[1].split("\n\n", 2)[1]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `?([a-z ]+?)`? \| (.*) \|$", table, re.M)}
    cfg = config.Config()
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            missing = [g.name for g in dataclasses.fields(section) if f"`{g.name}`" not in rows[f.name]]
            assert missing == [], f"the guide's {f.name} row lacks {missing}"
        else:
            assert f"`{f.name}`" in rows["top level"], f.name


@pytest.mark.parametrize("name", ["ce", "lsr", "center", "itra", "itra_c"])
def test_a_written_configuration_drops_only_the_loss_keys_its_loss_does_not_read(name):
    unread = {"lam": 2.5, "bandwidth": "multiscale", "sigma": 3.0, "form": "paper", "sigma_ema": 0.5,
              "lam_warmup_steps": 7, "eps": 0.3, "center_lr": 0.05}
    cfg = config.from_dict({"loss": {"name": name}})
    odd = config.override(cfg, {f"loss.{k}": v for k, v in unread.items() if k not in config.LOSS_READS[name]})
    assert set(cfg.written()["loss"]) == {"name", *config.LOSS_READS[name]}
    assert config.from_dict(odd.written()).written() == cfg.written()

    def value(c: config.Config) -> torch.Tensor:  # what the loss computes on fixed inputs, two steps
        torch.manual_seed(0)
        fn = losses.build(c.loss, num_classes=3, feature_dim=4)
        logits, y, h1, h2 = torch.randn(12, 3), torch.arange(12) % 3, torch.randn(12, 4), torch.randn(12, 4)
        return torch.stack([fn(logits, y, h1, h2, y).total for _ in range(2)])

    assert torch.equal(value(cfg), value(odd))  # the keys it drops change nothing
