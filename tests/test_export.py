"""The handed-over model: a state dict and its configuration, and TorchScript where it traces."""

from __future__ import annotations

import pytest
import torch

import itra_tune
from itra_tune import config, export, models


def _model():
    torch.manual_seed(0)
    return models.build("mlp", 10, (1, 8, 8), normalization=((0.3,), (0.4,))).eval()


def test_export_round_trips_the_model_and_its_standalone_program(tmp_path):
    model, x = _model(), torch.rand(4, 1, 8, 8)
    cfg = config.override(config.Config(), {"model.name": "mlp"})
    out = export.save(model, cfg, tmp_path / "export", x, metrics={"test_acc": 0.9})
    back = itra_tune.load_exported(out)
    assert torch.equal(back(x), model(x))
    meta = export.json_meta(out)
    assert meta["standalone"] == export.STANDALONE and meta["metrics"] == {"test_acc": 0.9}
    assert meta["input"].startswith("float32 pixels in [0, 1]") and meta["output"] == "logits (B, K)"
    program = torch.export.load(str(out / export.STANDALONE)).module()
    x7 = torch.rand(7, 1, 8, 8)  # another batch size than the example's
    assert torch.allclose(program(x7), model(x7), atol=1e-6)


def test_a_failed_export_leaves_the_older_one_and_no_partial_folder(tmp_path):
    model, x = _model(), torch.randn(4, 1, 8, 8)
    cfg = config.override(config.Config(), {"model.name": "mlp"})
    out = export.save(model, cfg, tmp_path / "export", x)
    with pytest.raises(RuntimeError):
        export.save(model, cfg, out, torch.randn(4, 3, 5, 5))  # an example the model cannot take
    assert torch.equal(itra_tune.load_exported(out)(x), model(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_load_exported_names_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(itra_tune.ConfigError, match="not an itra_tune export"):
        itra_tune.load_exported(tmp_path)
