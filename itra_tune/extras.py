"""The optional parts of itra_tune, and the extra that installs each.

The core install (``pip install itra_tune``: PyTorch, torchvision, NumPy, PyYAML, tqdm) trains: ``ITRALoss``,
``SecondBatch``, ``split_model``, the engine, ``itra_tune.train`` and ``load_exported``. ``itra_tune[search]``
adds the search and its record (Ray Tune, Optuna, MLflow, matplotlib, scikit-learn, which also holds the
``digits`` dataset); ``itra_tune[text]`` the text models and ``ITRATrainer`` (transformers, accelerate);
``itra_tune[all]`` both; ``[timm]`` the ``timm:NAME`` models, ``[lightning]`` ``ITRACallback``, ``[datasets]``
Hugging Face datasets saved to disk as search data. Using a part whose extra is missing raises ``MissingExtra``:
one line naming the ``pip install`` that adds it (exit 2 on the command line, as any bad input).
"""

from __future__ import annotations

import importlib.util

from itra_tune.config import ConfigError

EXTRA = {"ray": "search", "optuna": "search", "mlflow": "search", "matplotlib": "search", "sklearn": "search",
         "transformers": "text", "accelerate": "text", "timm": "timm", "lightning": "lightning",
         "datasets": "datasets"}
DISTRIBUTION = {"ray": "ray[tune]", "sklearn": "scikit-learn"}  # where the import name is not the package's
SEARCH = tuple(m for m, extra in EXTRA.items() if extra == "search")


class MissingExtra(ModuleNotFoundError, ConfigError):
    """A part of itra_tune used without its optional dependencies; the message names the extra that adds them.

    An ImportError (``except ImportError`` catches it) and a ConfigError (the command lines print it as one line
    and exit 2).
    """


def message(module: str, what: str) -> str:
    top = module.partition(".")[0]
    return (f"{what} needs {DISTRIBUTION.get(top, top)}, which is not installed: "
            f'pip install "itra_tune[{EXTRA[top]}]"')


def check(*modules: str, what: str) -> None:
    """Raise MissingExtra, without importing anything, unless every one of ``modules`` is installed.

    Args:
        modules: top-level import names, keys of ``EXTRA``.
        what: the part that needs them, as the user knows it ("the search", "the digits dataset").
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(message(module, what), name=module)


def missing(error: ModuleNotFoundError, what: str) -> MissingExtra | None:
    """``error`` as a MissingExtra when the module it lacks belongs to an extra; None for any other module."""
    if isinstance(error, MissingExtra):
        return error
    top = (error.name or "").partition(".")[0]
    return MissingExtra(message(top, what), name=top) if top in EXTRA else None


__all__ = ["EXTRA", "SEARCH", "MissingExtra", "check", "missing"]
