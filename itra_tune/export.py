"""A trained model for serving code: its state dict and configuration, plus TorchScript where it traces.

    export.save(model, config, "exports/fmnist", example)   # model.pt, config.yaml, meta.json, model.ts.pt
    model = itra_tune.load_exported("exports/fmnist")       # the module with features/head, eval mode
    scripted = torch.jit.load("exports/fmnist/model.ts.pt")  # no itra_tune needed, where it was written

The folder is written beside its final place and renamed into it, so a crash leaves no half-made export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from itra_tune import checkpoint, models
from itra_tune import config as config_mod
from itra_tune.config import Config, ConfigError

WEIGHTS, CONFIG, META, SCRIPTED = "model.pt", "config.yaml", "meta.json", "model.ts.pt"


def save(model: models.Classifier, cfg: Config, out: str | Path, example: Tensor,
         metrics: dict[str, Any] | None = None) -> Path:
    """Export ``model`` (trained with ``cfg``; left on the CPU in eval mode) to ``out``, replacing an older export.

    Args:
        model: the trained classifier.
        cfg: its configuration; ``load`` rebuilds the architecture from it.
        out: the export folder.
        example: a batch of inputs, to trace the TorchScript module and to check it against the model.
        metrics: figures to keep beside it (test accuracy, ...).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = example.cpu()
    with torch.no_grad():
        model(example)  # the recorded input shape must be one the model takes: fail before writing anything
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        checkpoint.save({"model": model.state_dict()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        scripted = _torchscript(model, example, tmp / SCRIPTED, models.modality(cfg.model.name))
        meta = {"num_classes": model.num_classes, "input_shape": list(example.shape[1:]),
                "input_dtype": str(example.dtype).removeprefix("torch."), "torchscript": scripted,
                "code_version": config_mod.code_version(), "metrics": metrics or {}}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _torchscript(model: nn.Module, example: Tensor, path: Path, modality: str) -> str:
    """Trace ``model``; keep it only when it reproduces the model's output. Returns the file or why not."""
    if modality == "text":
        return "not written: a traced transformer would fix the padded length of the example batch"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            traced = torch.jit.trace(model, example)
            ok = torch.allclose(traced(example), model(example), atol=1e-5)
        if not ok:
            return "not written: the traced module does not reproduce the model's output"
        traced.save(str(path))
        return path.name
    except Exception as e:  # tracing fails on data-dependent control flow: the state dict still serves
        return f"not written: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def json_meta(path: str | Path) -> dict[str, Any]:
    """The export's meta.json: classes, input shape and dtype, TorchScript file (or why not), metrics."""
    return json.loads((Path(path) / META).read_text())


def load(path: str | Path, device: str = "cpu") -> models.Classifier:
    """The exported classifier, rebuilt from its configuration and weights, in eval mode on ``device``."""
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise ConfigError(f"{path}: not an itra_tune export (expected {WEIGHTS}, {CONFIG} and {META}); "
                          "make one with pipelines/search_then_retrain.py or itra_tune.export.save")
    meta = json_meta(path)
    cfg = config_mod.load(path / CONFIG)
    model = models.build(cfg.model.name, meta["num_classes"], tuple(meta["input_shape"]), pretrained=False)
    model.load_state_dict(checkpoint.load(path / WEIGHTS)["model"])
    return model.to(device).eval()
