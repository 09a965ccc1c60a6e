"""The handed-over model: a state dict and its configuration, and TorchScript where it traces."""

from __future__ import annotations

import warnings

import pytest
import torch

import itra_tune
from itra_tune import config, export, models


def _model():
    torch.manual_seed(0)
    return models.build("mlp", 10, (1, 8, 8)).eval()


def test_export_round_trips_the_model_and_its_torchscript(tmp_path):
    model, x = _model(), torch.randn(4, 1, 8, 8)
    cfg = config.override(config.Config(), {"model.name": "mlp"})
    out = export.save(model, cfg, tmp_path / "export", x, metrics={"test_acc": 0.9})
    back = itra_tune.load_exported(out)
    assert torch.equal(back(x), model(x))
    meta = export.json_meta(out)
    assert meta["torchscript"] == export.SCRIPTED and meta["metrics"] == {"test_acc": 0.9}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks TorchScript deprecated in favour of torch.export
        scripted = torch.jit.load(str(out / export.SCRIPTED))
    assert torch.allclose(scripted(x), model(x), atol=1e-6)


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
