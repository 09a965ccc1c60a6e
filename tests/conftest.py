from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def tiny_config():
    """A configuration that trains in about a second on the synthetic mixture."""
    from itra_tune import config

    def make(**overrides):
        raw = {
            "data": {"name": "synthetic", "batch_size": 32, "subset": 640},
            "model": {"name": "mlp"},
            "loss": {"name": "itra_c", "lam": 0.5},
            "optim": {"lr": 0.05},
            "train": {"epochs": 2, "compactness_samples": 64},
        }
        return config.override(config.from_dict(raw), overrides)

    return make
