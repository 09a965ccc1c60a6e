"""Every registered model builds and splits into features (B, D) and logits (B, K) for its input sizes."""

from __future__ import annotations

import pytest
import torch

from itra_tune import hf, models
from itra_tune.config import ConfigError

SHAPES = {
    "resnet18": [(3, 32, 32), (1, 28, 28)],
    "resnet101": [(3, 32, 32), (1, 28, 28)],
    "vgg13": [(3, 32, 32), (1, 28, 28)],
    "mobilenet_v2": [(3, 32, 32), (1, 28, 28)],
    "resnet18_imagenet": [(3, 64, 64)],
    "resnet50_imagenet": [(3, 64, 64)],
    "small_cnn": [(1, 8, 8), (1, 28, 28)],
    "mlp": [(1, 8, 8)],
}
DIMS = {"resnet18": 512, "resnet101": 2048, "vgg13": 512, "mobilenet_v2": 1280, "resnet18_imagenet": 512,
        "resnet50_imagenet": 2048, "small_cnn": 128, "mlp": 128}


def test_every_registry_entry_is_covered():
    # Hugging Face checkpoints: each family is built from a tiny configuration in test_data_text.py
    assert set(SHAPES) | set(hf.CHECKPOINTS) == set(models.MODELS)


@pytest.mark.parametrize(("name", "shape"), [(n, s) for n, shapes in SHAPES.items() for s in shapes])
def test_feature_and_logit_shapes(name, shape):
    model = models.build(name, num_classes=7, input_shape=shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        h = model.features(x)
        logits = model.head(h)
    assert h.shape == (2, DIMS[name]) == (2, model.feature_dim)
    assert logits.shape == (2, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown model 'resnet9'.*resnet18"):
        models.build("resnet9", 10, (3, 32, 32))
