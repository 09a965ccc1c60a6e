"""A trained model for serving code: its state dict and configuration, plus a standalone ``torch.export``
program where the model exports.

    export.save(model, config, "exports/fmnist", example)   # model.pt, config.yaml, meta.json, model.pt2
    model = itra_tune.load_exported("exports/fmnist")       # the module with features/head, eval mode
    program = torch.export.load("exports/fmnist/model.pt2").module()   # torch alone, no itra_tune

Both take what the handed-over model takes: image models float32 pixels in [0, 1], (B, C, H, W), normalized
inside the model; text models int64 token ids, right-padded with -1. Both return logits (B, K); the class names,
when the data named its classes, are in meta.json's ``labels`` and the loaded model's ``labels``. The weights are
read with ``weights_only=True``. The folder is written beside its final place and renamed into it, so a crash
leaves no half-made export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from itra_tune import checkpoint, models
from itra_tune import config as config_mod
from itra_tune.config import Config, ConfigError

WEIGHTS, CONFIG, META, STANDALONE = "model.pt", "config.yaml", "meta.json", "model.pt2"


def save(model: models.Classifier, cfg: Config, out: str | Path, example: Tensor,
         metrics: dict[str, Any] | None = None, standalone: bool = True) -> Path:
    """Export ``model`` (trained with ``cfg``; left on the CPU in eval mode) to ``out``, replacing an older export.

    Args:
        model: the trained classifier.
        cfg: its configuration; ``load`` rebuilds the architecture from it.
        out: the export folder.
        example: a batch of inputs as the model takes them, to export the program and check it against the model.
        metrics: figures to keep beside it (test accuracy, ...).
        standalone: also write ``model.pt2`` (``torch.export``, dynamic batch size).
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
        (tmp / CONFIG).write_text(yaml.safe_dump(cfg.written(), sort_keys=False))
        modality = "text" if example.dtype == torch.long else "image"  # a factory's model reads either
        program = _program(model, example, tmp / STANDALONE, modality) if standalone else "not written: not asked for"
        meta = {"num_classes": model.num_classes, "input_shape": list(example.shape[1:]),
                "input_dtype": str(example.dtype).removeprefix("torch."),
                "input": "token ids (B, L), padded with -1" if example.dtype == torch.long else
                         "float32 pixels in [0, 1], (B, C, H, W); normalized inside the model",
                "output": "logits (B, K)", "labels": list(model.labels) if model.labels else None,
                "standalone": program,
                "code_version": config_mod.code_version(), "metrics": metrics or {}}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _program(model: nn.Module, example: Tensor, path: Path, modality: str) -> str:
    """``torch.export`` the model with a dynamic batch size; keep it only when it reproduces the model's output.

    Returns the file name, or why it was not written.
    """
    if modality == "text":
        return "not written: text models are loaded with itra_tune.load_exported (padded lengths vary)"
    try:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        with torch.no_grad():
            ok = torch.allclose(program.module()(example), model(example), atol=1e-5)
        if not ok:
            return "not written: the exported program does not reproduce the model's output"
        torch.export.save(program, str(path))
        return path.name
    except Exception as e:  # noqa: BLE001 - an unexportable model still serves through its state dict
        return f"not written: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def predictions(model: models.Classifier, x: Tensor) -> dict[str, Any]:
    """What a served model answers for inputs ``x``, as numpy arrays: ``logits`` (B, K), ``probabilities`` (B, K),
    ``class`` (B,) and, when its classes have names, ``label`` (B,), the predicted class's name."""
    import numpy as np

    with torch.no_grad():
        logits = model(x).float()
    out = {"logits": logits.numpy(), "probabilities": logits.softmax(1).numpy(), "class": logits.argmax(1).numpy()}
    if model.labels:
        out["label"] = np.asarray(model.labels, dtype=object)[out["class"]]
    return out


def json_meta(path: str | Path) -> dict[str, Any]:
    """The export's meta.json: classes and their names, input shape and dtype, the standalone program (or why not),
    metrics."""
    return json.loads((Path(path) / META).read_text())


def load(path: str | Path, device: str = "cpu") -> models.Classifier:
    """The exported classifier, rebuilt from its configuration and weights, in eval mode on ``device``."""
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise ConfigError(f"{path}: not an itra_tune export (expected {WEIGHTS}, {CONFIG} and {META}); "
                          "make one with pipelines/search_then_retrain.py or itra_tune.export.save")
    meta = json_meta(path)
    cfg = config_mod.load(path / CONFIG)
    model = models.build(cfg.model.name, meta["num_classes"], tuple(meta["input_shape"]), pretrained=False,
                         options=cfg.model.options)
    model.load_state_dict(checkpoint.load(path / WEIGHTS)["model"])
    model.labels = tuple(meta["labels"]) if meta.get("labels") else None
    return model.to(device).eval()
