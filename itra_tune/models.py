"""Model registry. Every model splits into a feature extractor and a linear classifier (the paper's E and C):

    model.features(x) -> (B, D)   # penultimate-layer features, the input of the matching loss
    model.head(h)     -> (B, K)   # logits

Only this module knows where a torchvision or Hugging Face model keeps its classifier. Text models take
(B, L) token ids padded with ``hf.PAD`` and build their own attention mask; ``itra_tune.hf`` resolves their
checkpoint names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from itra_tune import hf
from itra_tune.config import ConfigError

InputShape = tuple[int, ...]  # (C, H, W) of one example


class Normalize(nn.Module):
    """The input preprocessing an image model carries: ``(x - mean) / std`` per channel.

    Image models take float32 pixels in [0, 1], (B, C, H, W); the dataset's statistics live here, as buffers
    saved with the weights, so a model handed over needs nothing from the data code.
    """

    def __init__(self, channels: int, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        mean = torch.tensor(mean if mean is not None else (0.0,) * channels, dtype=torch.float32)
        std = torch.tensor(std if std is not None else (1.0,) * channels, dtype=torch.float32)
        if mean.numel() != channels or std.numel() != channels or not (std > 0).all():
            raise ValueError(f"Normalize: expected {channels} means and {channels} positive stds, got {mean}, {std}")
        self.register_buffer("mean", mean.view(1, channels, 1, 1))
        self.register_buffer("std", std.view(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``preprocess`` (x -> the network's input), a feature extractor ``body`` ((B, D)) and a linear ``fc`` head
    (D -> K). ``forward`` returns logits."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.preprocess: nn.Module = nn.Identity()
        self.body = body
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.preprocess(x))  # (B, D)

    def head(self, h: Tensor) -> Tensor:
        return self.fc(h)  # (B, K)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _torchvision(name: str) -> Any:
    """torchvision's model zoo, imported when a model of it is built (it takes a second and more to import)."""
    return getattr(importlib.import_module("torchvision.models"), name)


def _cifar_resnet(factory: str) -> Callable[..., Classifier]:
    # The CIFAR variant of He et al. 2016: a 3x3 stride-1 stem and no max-pool, so 32x32 (and 28x28)
    # inputs keep their resolution into the first stage.
    def build(num_classes: int, input_shape: InputShape, pretrained: bool = False) -> Classifier:
        net = _torchvision(factory)(num_classes=num_classes)
        net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        dim = net.fc.in_features
        net.fc = nn.Identity()  # torchvision's forward then returns the pooled features
        return Classifier(net, dim, num_classes)

    return build


def _imagenet_resnet(factory: str, weights: str) -> Callable[..., Classifier]:
    def build(num_classes: int, input_shape: InputShape, pretrained: bool = False) -> Classifier:
        net = _torchvision(factory)(weights=weights if pretrained else None)
        if input_shape[0] != 3:
            net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return Classifier(net, dim, num_classes)

    return build


def vgg13(num_classes: int, input_shape: InputShape, pretrained: bool = False) -> Classifier:
    """VGG-13 with batch norm, CIFAR head (Simonyan & Zisserman 2015): 512-d pooled features."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers = importlib.import_module("torchvision.models.vgg").make_layers(cfg, batch_norm=True)
    layers[0] = nn.Conv2d(input_shape[0], 64, kernel_size=3, padding=1)
    for m in layers:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True  # 28 -> 14 -> 7 -> 4 -> 2 -> 1, as 32 -> ... -> 1
    body = nn.Sequential(layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, 512, num_classes)


def mobilenet_v2(num_classes: int, input_shape: InputShape, pretrained: bool = False) -> Classifier:
    """MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and second stage."""
    setting = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],  # t, c, n, s
               [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    net = _torchvision("mobilenet_v2")(num_classes=num_classes, inverted_residual_setting=setting)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(input_shape[0], stem.out_channels, 3, stride=1, padding=1, bias=False)
    dim = net.last_channel
    net.classifier = nn.Identity()
    return Classifier(net, dim, num_classes)


def small_cnn(num_classes: int, input_shape: InputShape, pretrained: bool = False) -> Classifier:
    """Three conv blocks and global pooling: 128-d features, for 8x8 digits and other small images."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    body = nn.Sequential(
        *block(input_shape[0], 32), *block(32, 64), nn.MaxPool2d(2, ceil_mode=True),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return Classifier(body, 128, num_classes)


def mlp(num_classes: int, input_shape: InputShape, pretrained: bool = False) -> Classifier:
    """Two hidden layers of 128 on the flattened input: the fastest model, for tests and tabular data."""
    d_in = int(torch.tensor(input_shape).prod())
    body = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    return Classifier(body, 128, num_classes)


class TextClassifier(Classifier):
    """A Hugging Face encoder whose sentence vector is what its own classification head would read.

    ``pooling``: ``pooler`` (BERT: the pooler output, tanh of a dense layer on [CLS]), ``first`` (DistilBERT:
    the first token's hidden state) or ``last`` (XLNet: a tanh summary of the last real token).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str, dropout: float, pad_id: int) -> None:
        dim = encoder.config.hidden_size
        super().__init__(encoder, dim, num_classes)
        if pooling not in ("pooler", "first", "last"):
            raise ValueError(f"pooling must be pooler, first or last but got {pooling!r}")
        self.pooling, self.pad_id = pooling, pad_id
        self.summary = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if pooling == "last" else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def features(self, x: Tensor) -> Tensor:
        mask = x != hf.PAD  # (B, L)
        out = self.body(input_ids=x.masked_fill(~mask, self.pad_id), attention_mask=mask.long())
        if self.pooling == "pooler":
            return out.pooler_output  # (B, D)
        hidden = out.last_hidden_state  # (B, L, D)
        if self.pooling == "first":
            return hidden[:, 0]
        last = mask.sum(1) - 1  # batches are right-padded: the last real token (XLNet's <cls>)
        return self.summary(hidden[torch.arange(x.shape[0], device=x.device), last])

    def head(self, h: Tensor) -> Tensor:
        return self.fc(self.dropout(h))


def text_classifier(encoder: nn.Module, num_classes: int) -> TextClassifier:
    """Wrap a transformers encoder (BertModel, DistilBertModel, XLNetModel, ...) with the usual pooling."""
    cfg = encoder.config
    kind = cfg.model_type
    if kind == "xlnet":
        pooling, dropout = "last", cfg.summary_last_dropout
    elif kind == "distilbert":
        pooling, dropout = "first", cfg.seq_classif_dropout
    else:
        pooling = "pooler" if getattr(encoder, "pooler", None) is not None else "first"
        dropout = getattr(cfg, "classifier_dropout", None)
        dropout = getattr(cfg, "hidden_dropout_prob", 0.1) if dropout is None else dropout
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    return TextClassifier(encoder, num_classes, pooling, dropout, pad_id)


def _hugging_face(checkpoint: str) -> Callable[..., Classifier]:
    def build(num_classes: int, input_shape: InputShape, pretrained: bool = False) -> Classifier:
        return text_classifier(hf.load_encoder(checkpoint, pretrained), num_classes)

    return build


MODELS: dict[str, Callable[..., Classifier]] = {
    "resnet18": _cifar_resnet("resnet18"),
    "resnet101": _cifar_resnet("resnet101"),
    "vgg13": vgg13,
    "mobilenet_v2": mobilenet_v2,
    "resnet18_imagenet": _imagenet_resnet("resnet18", "IMAGENET1K_V1"),
    "resnet50_imagenet": _imagenet_resnet("resnet50", "IMAGENET1K_V2"),
    "small_cnn": small_cnn,
    "mlp": mlp,
    **{name: _hugging_face(name) for name in hf.CHECKPOINTS},
}


def modality(name: str) -> str:
    """``text`` for a model that reads token ids (a Hugging Face checkpoint, alias or folder), else ``image``."""
    return "text" if name not in MODELS or name in hf.CHECKPOINTS else "image"


def check_available(name: str) -> None:
    """Raise ModelMissing now, rather than in every trial, when a checkpoint's files cannot be had."""
    check_name(name)
    if modality(name) == "text":
        hf.check(name)


def check_name(name: str) -> None:
    if name not in MODELS and not hf.is_checkpoint_name(name):
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}, a Hugging Face "
                          "checkpoint as hf:NAME or org/NAME, or a local checkpoint folder (model.name)")


def build(name: str, num_classes: int, input_shape: InputShape, pretrained: bool = False,
          normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Classifier:
    """Build a registered model with ``features``/``head`` for inputs of ``input_shape``.

    Args:
        name: a registered model, or a Hugging Face checkpoint.
        num_classes, input_shape: K, and (C, H, W) for images or (L,) for token ids.
        pretrained: torchvision's ImageNet weights, or the checkpoint's own.
        normalization: per-channel (mean, std) an image model applies to its [0, 1] pixels; None leaves the
            identity in place, to be filled by ``load_state_dict`` (the statistics are saved with the weights).
    """
    check_name(name)
    builder = MODELS.get(name) or _hugging_face(name)
    model = builder(num_classes, tuple(input_shape), pretrained)
    if modality(name) == "image":
        mean, std = normalization if normalization is not None else (None, None)
        model.preprocess = Normalize(int(input_shape[0]), mean, std)
    return model
