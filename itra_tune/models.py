"""Model registry. Every model splits into a feature extractor and a linear classifier (the paper's E and C):

    model.features(x) -> (B, D)   # penultimate-layer features, the input of the matching loss
    model.head(h)     -> (B, K)   # logits

Only this module knows where a torchvision, timm or Hugging Face model keeps its classifier (``find_head``,
``split_model``). Names: the registered models, ``timm:NAME`` (any timm architecture, random weights unless
``model.pretrained``), ``torchvision:NAME`` (any torchvision classifier, the same), ``package.module:callable`` (a
factory of your own, called by keyword: ``num_classes=``, and ``input_shape=`` or ``in_chans=`` where it takes
them), and Hugging Face checkpoints. ``model.options`` reaches timm's ``create_model``, torchvision's
``get_model`` and a factory as keyword arguments. Text models take (B, L) token ids padded with ``hf.PAD`` and
build their own attention mask; ``itra_tune.hf`` resolves their checkpoint names.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from itra_tune import extras, hf
from itra_tune.config import ConfigError, did_you_mean, import_callable, is_callable_ref

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
    (D -> K). ``forward`` returns logits; ``labels`` names its classes, by class number, when its data did."""

    labels: tuple[str, ...] | None = None

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, fc: bool = True) -> None:
        super().__init__()
        self.preprocess: nn.Module = nn.Identity()
        self.body = body
        if fc:  # subclasses whose head lives in the body (timm's, a factory's model) override ``head``
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


# --- models of your own: split at the head --------------------------------------------------------------

HEAD_NAMES = ("classifier", "fc", "head", "heads", "score")  # torchvision, timm, Hugging Face classifiers


def find_head(model: nn.Module) -> nn.Module:
    """The layer that maps a model's penultimate features to its outputs: timm's ``get_classifier()``, else the last
    ``nn.Linear`` of the first of ``classifier``, ``fc``, ``head``, ``heads``, ``score`` the model has, else the
    model's last ``nn.Linear``.

    Raises:
        ValueError: the model has no linear layer, or is a timm model without a classifier (``num_classes=0``);
            pass ``head=`` to ``split_model``.
    """
    get = getattr(model, "get_classifier", None)
    if callable(get) and callable(getattr(model, "forward_head", None)):  # timm
        classifier = get()
        if isinstance(classifier, nn.Linear):
            return classifier
        if not any(True for _ in classifier.parameters()):
            raise ValueError(f"split_model: this timm {type(model).__name__} has no classifier (created with "
                             f"num_classes=0), so its output is already the pooled features and there are no "
                             f"logits to train; create it with num_classes=<your classes>")
        return classifier
    for name in HEAD_NAMES:
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            linear = _last_linear(part)
            if linear is not None:
                return linear
    linear = _last_linear(model)
    if linear is None:
        raise ValueError(f"split_model: found no linear layer in {type(model).__name__}; pass head=<the module "
                         f"that maps the features to the outputs>")
    return linear


def _guessed(model: nn.Module, head: nn.Module) -> bool:
    """Whether ``find_head`` took ``head`` as the model's last linear layer, no name or timm telling it."""
    get = getattr(model, "get_classifier", None)
    if callable(get) and callable(getattr(model, "forward_head", None)):
        return False
    parts = [getattr(model, n, None) for n in HEAD_NAMES]
    return not any(isinstance(p, nn.Module) and _last_linear(p) is head for p in parts)


def _last_linear(module: nn.Module) -> nn.Module | None:
    found = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


def _head_name(model: nn.Module, head: nn.Module) -> str:
    """The head's place in ``model`` and its shape, for a person: ``aux (Linear 32 -> 10)``."""
    path = next((n for n, m in model.named_modules() if m is head), "") or type(head).__name__
    shape = f" {head.in_features} -> {head.out_features}" if isinstance(head, nn.Linear) else ""
    return f"{path} ({type(head).__name__}{shape})"


def _logits(out: Any) -> Tensor | None:
    """The tensor a model's output holds its logits in: the output itself, ``.logits`` (Hugging Face), or the
    first of a tuple; None when there is no telling."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    return out[0] if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor) else None


class WithFeatures(nn.Module):
    """``model`` that also returns the features its head reads: ``net(*args) -> (model(*args), features)``.

    The features are the head's input, caught by a forward hook, flattened to (B, D): the penultimate layer the
    paper matches. The model itself is unchanged (``net.model``; its state is ``net``'s, under ``model.``): save,
    export and serve it as before. Call ``remove()`` to take the hooks off.

    A head found rather than given (``find_head``) is checked on the first forward pass run eagerly (not under
    ``torch.compile``): it ran once and its output is the model's output; else that pass raises, asking for
    ``head=``. A head found as the model's last linear layer
    (no classifier, fc, head, ... attribute names it) is also named in a warning.
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None, warn: bool = True) -> None:
        super().__init__()
        self.model = model
        found = find_head(model) if head is None else head
        object.__setattr__(self, "head", found)  # a part of model: not registered twice, so its weights save once
        self._caught: Tensor | None = None
        # until the first pass checked it: a found head's calls and output (then nothing more is counted, so that
        # torch.compile sees no Python counter change from step to step)
        self._checked = head is not None
        self._guessed = warn and head is None and _guessed(model, found)
        self._calls, self._out = 0, None
        self._hook = self.head.register_forward_pre_hook(self._catch)
        self._post = self.head.register_forward_hook(self._record)

    # the check runs eagerly: under torch.compile the flag is never read, so a step compiled once stays compiled
    def _catch(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._caught = args[0]
        if not torch.compiler.is_compiling() and not self._checked:
            self._calls += 1

    def _record(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not torch.compiler.is_compiling() and not self._checked:
            self._out = output

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, Tensor]:
        self._caught = None
        out = self.model(*args, **kwargs)
        h, self._caught = self._caught, None
        if h is None:
            raise RuntimeError(f"split_model: the head {_head_name(self.model, self.head)} did not run in the "
                               f"forward pass; pass head=<the module that maps the features to the outputs>")
        if not torch.compiler.is_compiling() and not self._checked:
            self._check(out)
        return out, h.flatten(1) if h.dim() > 2 else h

    def _check(self, out: Any) -> None:
        name, calls, head_out = _head_name(self.model, self.head), self._calls, self._out
        self._calls, self._out = 0, None
        fix = "pass head=<the module that maps the features to the outputs>"
        if calls > 1:
            raise RuntimeError(f"split_model: the head {name} ran {calls} times in one forward pass, so which of its "
                               f"inputs are the features is unclear; {fix}")
        logits = _logits(out)
        if logits is None:
            raise RuntimeError(f"split_model: cannot tell the logits in the model's {type(out).__name__} output, so "
                               f"whether {name} makes them is unchecked; {fix}")
        same = logits is head_out or (isinstance(head_out, Tensor) and head_out.shape == logits.shape
                                      and torch.equal(head_out.to(logits.dtype), logits))
        if not same:
            raise RuntimeError(f"split_model: the model's outputs are not what {name} returns (it is not the layer "
                               f"that makes the logits, or they are changed after it), so its input is not the "
                               f"penultimate features; {fix}")
        if self._guessed:
            warnings.warn(f"split_model: took {name}, the model's last linear layer, for the head (it makes the "
                          f"outputs); pass head= to choose another", stacklevel=3)
        self._checked = True

    def remove(self) -> None:
        self._hook.remove()
        self._post.remove()


def split_model(model: nn.Module, head: nn.Module | None = None) -> WithFeatures:
    """Your classifier, returning its penultimate features beside its outputs, without rewriting it.

    Works with torchvision and timm classifiers (the features are timm's ``forward_head(pre_logits=True)``),
    Hugging Face ``...ForSequenceClassification`` models (the features are what their classifier reads: BERT's
    pooled output after dropout, DistilBERT's first token after its pre-classifier) and any model whose last
    linear layer is its head; ``head=`` names another layer.

        net = split_model(torchvision.models.resnet18(num_classes=10))
        logits, h = net(x)                           # h: (B, 512)
    """
    return WithFeatures(model, head)


class Wrapped(Classifier):
    """A model of a user's factory (``model.name: package.module:callable``): the features are its head's input
    (``split_model``), the head its own layer."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: InputShape,
                 head: nn.Module | None = None) -> None:
        net = WithFeatures(model, head, warn=False)  # a factory's user names no head: its check is the error
        dim = _probe_width(net, input_shape)  # one forward pass: the features' width, and the head found checked
        super().__init__(net, int(dim), num_classes, fc=False)

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.preprocess(x))[1]

    def head(self, h: Tensor) -> Tensor:
        return self.body.head(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.body.model(self.preprocess(x))


def _probe_width(net: WithFeatures, input_shape: InputShape) -> int:
    dtype = torch.long if len(input_shape) == 1 else torch.float32
    was = net.training
    net.eval()
    with torch.no_grad():
        _, h = net(torch.zeros(2, *input_shape, dtype=dtype))
    net.train(was)
    return int(h.shape[1])


def factory_kwargs(fn: Callable[..., Any], ref: str, num_classes: int, input_shape: InputShape,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments a factory of yours is called with: ``num_classes``, ``input_shape`` (the example's
    shape) and ``in_chans`` (its channels) where its signature takes them, and ``model.options``. Checked against
    the signature, so that a mismatch is one line before any training rather than a trial's traceback.

    Raises:
        ConfigError: the factory takes no ``num_classes``, an option it does not take, an option that would
            replace what the data sets, or a parameter without a default that nothing passes.
    """
    options = dict(options or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass what there is
        return {"num_classes": num_classes, **options}
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    listed = ", ".join(params) or "none"
    if "num_classes" not in named and not takes_any:
        raise ConfigError(f"model.name {ref!r}: a factory is called by keyword, factory(num_classes=...), but this "
                          f"one takes ({listed}); name its parameter num_classes")
    given: dict[str, Any] = {"num_classes": num_classes}
    if "input_shape" in named:
        given["input_shape"] = tuple(input_shape)
    if "in_chans" in named:
        given["in_chans"] = int(input_shape[0])
    for key in options:
        if key in given:
            raise ConfigError(f"model.options.{key}: itra_tune sets {key} from the data; remove it from the options")
        if key not in named and not takes_any:
            raise ConfigError(f"model.options.{key}: {ref} takes no such argument{did_you_mean(key, named)}; its "
                              f"parameters: {listed}")
    needed = [n for n, p in params.items() if p.default is p.empty and n not in given and n not in options
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if needed:
        raise ConfigError(f"model.name {ref!r}: its parameter {needed[0]!r} has no default and itra_tune passes only "
                          f"num_classes, input_shape and in_chans; set it with --set model.options.{needed[0]}=..."
                          f" or give it a default")
    return {**given, **options}


def _factory(ref: str) -> Callable[..., Classifier]:
    def build(num_classes: int, input_shape: InputShape, pretrained: bool = False,
              options: dict[str, Any] | None = None) -> Classifier:
        fn = import_callable(ref, "model.name")
        kwargs = factory_kwargs(fn, ref, num_classes, input_shape, options)
        try:
            model = fn(**kwargs)
        except TypeError as e:  # an option the factory passes on (**kwargs) that the model does not take
            if not options:  # the factory's own error: its traceback is what to read
                raise
            raise ConfigError(f"model.name {ref!r} called with {', '.join(kwargs)}: {e}") from None
        if isinstance(model, Classifier):
            return model
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.name {ref!r} returned a {type(model).__name__}, not a torch nn.Module; a "
                              f"model factory is called as factory(num_classes=...) and returns the model")
        try:
            return Wrapped(model, num_classes, input_shape)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"model.name {ref!r}: {e}") from None

    return build


# --- torchvision's classifiers by name -----------------------------------------------------------------

def torchvision_name(name: str) -> str | None:
    """The torchvision architecture that ``torchvision:NAME`` names; None for other names."""
    return name[len("torchvision:"):] if name.startswith("torchvision:") else None


def _check_torchvision(name: str) -> None:
    arch = torchvision_name(name)
    known = importlib.import_module("torchvision.models").list_models()
    if arch not in known:
        raise ConfigError(f"unknown torchvision model {arch!r} (model.name {name!r}){did_you_mean(arch or '', known)}; "
                          f"list them with python -c \"import torchvision; print(torchvision.models.list_models())\"")


class _Gray(nn.Module):
    """One channel to the three an ImageNet architecture reads: the gray value in each."""

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, 3, -1, -1)


def _replace_head(net: nn.Module, num_classes: int) -> None:
    """A pretrained network's classifier swapped for a new linear layer of ``num_classes`` outputs."""
    head = find_head(net)
    if head.out_features == num_classes:
        return
    path = next(n for n, m in net.named_modules() if m is head)
    parent = net.get_submodule(path.rpartition(".")[0]) if "." in path else net
    setattr(parent, path.rpartition(".")[2], nn.Linear(head.in_features, num_classes))


def _torchvision_model(name: str) -> Callable[..., Classifier]:
    def build(num_classes: int, input_shape: InputShape, pretrained: bool = False,
              options: dict[str, Any] | None = None) -> Classifier:
        arch, channels = torchvision_name(name), int(input_shape[0])
        if channels not in (1, 3):
            raise ConfigError(f"model.name {name!r}: torchvision's models read 3 channels (a gray image is repeated "
                              f"into them), not {channels}; timm:NAME takes any (in_chans)")
        get = importlib.import_module("torchvision.models").get_model
        try:  # random weights unless asked: a positional or missing `weights` would download ImageNet's
            if pretrained:
                net = get(arch, weights="DEFAULT", **(options or {}))
                _replace_head(net, num_classes)
            else:
                net = get(arch, weights=None, num_classes=num_classes, **(options or {}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.options for {name!r}: {e}") from None
        head = find_head(net)
        return Wrapped(nn.Sequential(_Gray(), net) if channels == 1 else net, num_classes, input_shape, head)

    return build


class TimmClassifier(Classifier):
    """A timm model: features from its ``forward_head(forward_features(x), pre_logits=True)``, logits from its own
    ``get_classifier()``."""

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        classifier = net.get_classifier()
        dim = classifier.in_features if isinstance(classifier, nn.Linear) else \
            getattr(net, "head_hidden_size", None) or net.num_features
        super().__init__(net, int(dim), num_classes, fc=False)

    def features(self, x: Tensor) -> Tensor:
        net = self.body
        return net.forward_head(net.forward_features(self.preprocess(x)), pre_logits=True).flatten(1)

    def head(self, h: Tensor) -> Tensor:
        return self.body.get_classifier()(h)


def timm_name(name: str) -> str | None:
    """The timm architecture that ``timm:NAME`` (or a hub name ``timm/NAME``) names; None for other names."""
    for prefix in ("timm:", "timm/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return None


def _timm() -> Any:
    extras.check("timm", what="a timm model (model.name timm:NAME)")
    return importlib.import_module("timm")


def _check_timm(name: str) -> None:
    arch = timm_name(name)
    if not arch or not _timm().is_model(arch):
        raise ConfigError(f"unknown timm model {arch!r} (model.name {name!r}); list them with "
                          f"python -c \"import timm; print(timm.list_models('*vit*'))\"")


def _timm_model(name: str) -> Callable[..., Classifier]:
    def build(num_classes: int, input_shape: InputShape, pretrained: bool = False,
              options: dict[str, Any] | None = None) -> Classifier:
        timm, arch = _timm(), timm_name(name)
        kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": int(input_shape[0])}
        for key in options or {}:
            if key in kwargs:
                raise ConfigError(f"model.options.{key}: itra_tune sets {key} from the data; remove it from the "
                                  f"options")
        kwargs.update(options or {})
        try:  # transformers (ViT, Swin, ...) are built for the data's image size; convolutional nets take any
            try:
                net = timm.create_model(arch, pretrained=pretrained,
                                        **{"img_size": tuple(input_shape[1:]), **kwargs})
            except TypeError as e:
                if "img_size" not in str(e) or "img_size" in kwargs:
                    raise
                net = timm.create_model(arch, pretrained=pretrained, **kwargs)
        except TypeError as e:  # an option the architecture does not take
            raise ConfigError(f"model.options for {name!r}: {e}") from None
        return TimmClassifier(net, num_classes)

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
    """``text`` for a model that reads token ids (a Hugging Face checkpoint, alias or folder), ``image`` for the
    registered image models and timm's, ``any`` for a factory of the user's (it reads what the data holds)."""
    if is_callable_ref(name):
        return "any"
    if timm_name(name) is not None or torchvision_name(name) is not None:
        return "image"
    if name in MODELS and name not in hf.CHECKPOINTS:
        return "image"
    return "text"


def check_available(name: str, options: dict[str, Any] | None = None) -> None:
    """Raise now, rather than in every trial, when a model cannot be built here: ModelMissing for a checkpoint's
    files, MissingExtra without timm, ConfigError for an unknown timm or torchvision architecture, a factory that
    does not import or whose signature does not fit, or options for a model that takes none."""
    check_name(name)
    if options and not takes_options(name):
        raise ConfigError(f"model.options: {name!r} takes no options; they reach timm:NAME, torchvision:NAME and "
                          f"factories of yours (package.module:callable)")
    if timm_name(name) is not None:
        _check_timm(name)
    elif torchvision_name(name) is not None:
        _check_torchvision(name)
    elif is_callable_ref(name):
        factory_kwargs(import_callable(name, "model.name"), name, 2, (1, 1, 1), options)
    elif modality(name) == "text":
        hf.check(name)


def takes_options(name: str) -> bool:
    """Whether ``model.options`` reaches the builder of ``name``: timm's, torchvision's and factories do."""
    return timm_name(name) is not None or torchvision_name(name) is not None or is_callable_ref(name)


def check_name(name: str) -> None:
    if (name in MODELS or timm_name(name) is not None or torchvision_name(name) is not None or is_callable_ref(name)
            or hf.is_checkpoint_name(name)):
        return
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}, timm:NAME (a timm "
                      "model), torchvision:NAME (a torchvision model), package.module:callable (a factory of yours, "
                      "called by keyword with num_classes=), a Hugging Face checkpoint as hf:NAME or org/NAME, or a "
                      "local checkpoint folder (model.name)")


def builder(name: str) -> Callable[..., Classifier]:
    """What builds model ``name``: ``builder(name)(num_classes, input_shape, pretrained)``."""
    check_name(name)
    if name in MODELS:
        return MODELS[name]
    if timm_name(name) is not None:
        return _timm_model(name)
    if torchvision_name(name) is not None:
        return _torchvision_model(name)
    if is_callable_ref(name):
        return _factory(name)
    return _hugging_face(name)


def build(name: str, num_classes: int, input_shape: InputShape, pretrained: bool = False,
          normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
          options: dict[str, Any] | None = None) -> Classifier:
    """Build a model with ``features``/``head`` for inputs of ``input_shape``.

    Args:
        name: a registered model, ``timm:NAME``, ``package.module:callable`` or a Hugging Face checkpoint.
        num_classes, input_shape: K, and (C, H, W) for images or (L,) for token ids.
        pretrained: torchvision's or timm's ImageNet weights, or the checkpoint's own.
        normalization: per-channel (mean, std) an image model applies to its [0, 1] pixels; None leaves the
            identity in place, to be filled by ``load_state_dict`` (the statistics are saved with the weights).
        options: ``model.options``, keyword arguments of a timm, torchvision or factory builder.
    """
    make = builder(name)
    if options and not takes_options(name):
        raise ConfigError(f"model.options: {name!r} takes no options; they reach timm:NAME, torchvision:NAME and "
                          f"factories of yours (package.module:callable)")
    model = make(num_classes, tuple(input_shape), pretrained, **({"options": options} if options else {}))
    if len(input_shape) == 3 and modality(name) != "text":  # images, into any model that reads them
        mean, std = normalization if normalization is not None else (None, None)
        model.preprocess = Normalize(int(input_shape[0]), mean, std)
    return model
