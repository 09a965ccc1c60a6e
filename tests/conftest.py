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


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A real local Ray with two CPUs, shared by the search tests of one session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.fixture
def space_file(tmp_path):
    """Write a small search space over the synthetic data; keyword arguments replace top-level sections."""
    import yaml

    def make(name="tiny", **sections):
        raw = {
            "base": {"data": {"name": "synthetic", "batch_size": 32, "subset": 640},
                     "model": {"name": "mlp"}, "loss": {"name": "itra_c", "lam": 0.5},
                     "optim": {"lr": 0.05}, "train": {"epochs": 2, "compactness_samples": 64}},
            "search": {"loss.lam": {"type": "float", "low": 0.1, "high": 1.0},
                       "loss.bandwidth": {"type": "categorical", "choices": ["median", "multiscale"]}},
            "budget": {"num_samples": 4, "max_concurrent": 2},
            "scheduler": {"name": "none"},
        }
        raw.update(sections)
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(raw))
        return p

    return make
