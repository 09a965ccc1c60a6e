"""ITRACallback: the README's Lightning block as written, a collapse stopping training, and 2-process DDP on the
CPU (gloo): a different S2 on every rank, and a run resumed from a checkpoint drawing what an uninterrupted one
does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from readme import block as readme_block
from torch import nn
from torch.utils.data import TensorDataset

import itra_tune
from itra_tune.data.images import synthetic_mixture

pytest.importorskip("lightning")
import lightning as L  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "lightning_ddp.py"
ROOT = Path(__file__).resolve().parents[1]


def mixture(n: int) -> TensorDataset:
    x, y = synthetic_mixture(n)
    return TensorDataset(x.flatten(1), y)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def run_block(lam: float, epochs: int, tmp_path: Path, monkeypatch, **loss_kwargs) -> dict:
    code = readme_block("Lightning")
    if loss_kwargs:
        code = code.replace("itra_tune.ITRALoss(num_classes, lam=lam)",
                            f"itra_tune.ITRALoss(num_classes, lam=lam, **{loss_kwargs!r})")
    code = code.replace("L.Trainer(max_epochs=epochs, callbacks=[itra])",
                        "L.Trainer(max_epochs=epochs, callbacks=[itra], enable_progress_bar=False, "
                        "enable_model_summary=False, logger=L.pytorch.loggers.CSVLogger('logs'))")
    monkeypatch.chdir(tmp_path)
    scope = {"model": mlp(), "train_set": mixture(1024), "num_classes": 10, "lam": lam, "epochs": epochs}
    torch.manual_seed(1)
    exec(code, scope)
    return scope


def test_the_readme_lightning_block_trains_and_logs_the_losss_parts(tmp_path, monkeypatch):
    scope = run_block(0.5, 2, tmp_path, monkeypatch)
    trainer, itra = scope["trainer"], scope["itra"]
    assert trainer.global_step == 2 * 16 and itra.collapse is None
    logged = trainer.logged_metrics
    assert {"itra/ce", "itra/match", "itra/lam"} <= set(logged) and float(logged["itra/match"]) > 0
    x, y = scope["train_set"].tensors
    with torch.no_grad():
        acc = (scope["model"](x).argmax(1) == y).float().mean().item()
    assert acc > 0.6  # measured 0.95 on the training mixture; chance 0.1
    assert itra.state_dict()["second"] == {"seed": 1, "epoch": 1, "taken": 16}  # 16 batches of 64 a pass


def test_a_collapse_stops_the_trainer_with_its_reason(tmp_path, monkeypatch):
    # the paper's form collapses this MLP without normalization (tests/test_dropin.py); the callback stops it
    with pytest.warns(RuntimeWarning, match="features collapsed"):
        scope = run_block(2.0, 8, tmp_path, monkeypatch, form="paper")
    trainer, itra = scope["trainer"], scope["itra"]
    assert itra.collapse is not None and "collapsed" in itra.collapse and "training stopped" in itra.collapse
    assert trainer.global_step < 8 * 16 and trainer.global_step % 20 == 0  # stopped at the watch's step


def test_the_callback_raises_on_a_collapse_when_asked(tmp_path, monkeypatch):
    code = readme_block("Lightning").replace("seed=1)", "seed=1, on_collapse='raise')")
    code = code.replace("itra_tune.ITRALoss(num_classes, lam=lam)", "itra_tune.ITRALoss(num_classes, lam=lam, "
                        "form='paper')").replace("callbacks=[itra])", "callbacks=[itra], logger=False, "
                                                 "enable_progress_bar=False)")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(itra_tune.CollapseError, match="collapsed"), pytest.warns(RuntimeWarning):
        exec(code, {"model": mlp(), "train_set": mixture(1024), "num_classes": 10, "lam": 2.0, "epochs": 8})


def ddp(out: Path, *args: str) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True,
                         timeout=600, env=env, cwd=out)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_under_ddp_every_rank_draws_its_own_s2_and_a_resumed_run_continues_it(tmp_path):
    first = ddp(tmp_path / "first", "--devices", "2", "--max-steps", "4", "--save", str(tmp_path / "c.ckpt"))
    resumed = ddp(tmp_path / "resumed", "--devices", "2", "--max-steps", "8", "--ckpt-path", str(tmp_path / "c.ckpt"))
    straight = ddp(tmp_path / "straight", "--devices", "2", "--max-steps", "8")
    assert first[0]["s2"] != first[1]["s2"]  # measured: no S2 batch alike on the two ranks
    for rank in (0, 1):
        assert first[rank]["s2"] + resumed[rank]["s2"] == straight[rank]["s2"]  # the same S2, step for step
        assert resumed[rank]["loss_steps"] == resumed[rank]["watch_steps"] == 8  # the loss's state resumed
        assert resumed[rank]["logged"] == ["itra/ce", "itra/lam", "itra/match"]
    assert L.__version__  # the lightning extra is what ran


@pytest.mark.slow
def test_under_ddp_the_loss_is_the_single_process_loss_of_the_global_batch(tmp_path):
    """gather=True (the default): two ranks of 16 match as one process of 32, in value and in gradient."""
    sys.path.insert(0, str(SCRIPT.parent))
    import lightning_ddp

    ddp(tmp_path / "run", "--devices", "2", "--max-steps", "1")
    ranks = [torch.load(tmp_path / "run" / f"rank{r}.pt") for r in (0, 1)]
    model = lightning_ddp.network()
    net = itra_tune.split_model(model, head=model[2])
    net.load_state_dict(ranks[0]["weights"])
    x, y, x2, y2 = (torch.cat([rank[k] for rank in ranks]) for k in ("x", "y", "x2", "y2"))
    logits, h1 = net(x)
    _, h2 = net(x2)
    one = lightning_ddp.loss()(logits, y, h1, h2, y2)
    one.total.backward()
    assert one.match > 0
    for rank in ranks:  # every rank's matching loss is the global batch's, not its own half's
        torch.testing.assert_close(rank["parts"][2], one.match.detach(), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            logits_r, h1_r = net(rank["x"])
            own = lightning_ddp.loss()(logits_r, rank["y"], h1_r, net(rank["x2"])[1], rank["y2"])
        assert abs(float(own.match) - float(one.match.detach())) > 1e-3  # what gather=False would have matched
    mean_total = sum(rank["parts"][0] for rank in ranks) / 2  # each rank's CE is its half's; their mean the global
    torch.testing.assert_close(mean_total, one.total.detach(), rtol=1e-5, atol=1e-6)
    for name, p in net.named_parameters():  # DistributedDataParallel's averaged gradients are the single process's
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
