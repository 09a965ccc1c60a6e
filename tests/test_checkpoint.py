"""Checkpoints: atomic writes and loads that execute no pickled code."""

from __future__ import annotations

import pickle

import pytest
import torch

from itra_tune import checkpoint


class Payload:
    """An arbitrary class: unpickling it would run code of the writer's choosing."""


def test_round_trip_of_tensors_numbers_and_containers(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "history": [{"val_acc": 0.5}], "name": "x"}
    checkpoint.save(state, tmp_path / "a" / "state.pt")
    back = checkpoint.load(tmp_path / "a" / "state.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["history"] == state["history"]


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = checkpoint.save({"epoch": 1}, tmp_path / "state.pt")
    with pytest.raises(Exception):  # noqa: B017 - torch.save refuses a lambda, whichever error it raises
        checkpoint.save({"epoch": 2, "bad": lambda: None}, path)
    assert checkpoint.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_text_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A search's result files (best_config.yaml, trials.csv, summary.json): a write cut before its rename (here
    at the flush to disk, where a kill would leave a half-written file behind a plain write) keeps the old one."""
    path = checkpoint.write_text(tmp_path / "best_config.yaml", "loss:\n  lam: 0.5\n")
    assert path.read_text() == "loss:\n  lam: 0.5\n"

    def killed(_fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write_text(path, "loss:\n  lam: 3.0\n" + "#" * 100_000)
    assert path.read_text() == "loss:\n  lam: 0.5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["best_config.yaml"]


def test_load_refuses_pickled_objects(tmp_path):
    torch.save({"payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(tmp_path / "evil.pt")
