"""A user's Lightning script with ITRACallback, as tests/test_lightning.py runs it (2 CPU processes under DDP).

    python lightning_ddp.py OUT --devices 2 --max-steps 4 [--ckpt-path CKPT] [--save CKPT]

Each rank writes OUT/rank<r>.json: the labels of the S2 batches it drew, step by step, and its loss's state.
"""

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import itra_tune


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = itra_tune.split_model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
        self.itra_loss = itra_tune.ITRALoss(num_classes=4, lam=0.5)
        self.drawn: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        (x, y), (x2, y2) = batch, self.s2
        assert x2.device == self.device
        self.drawn.append(y2.tolist())
        logits, h1 = self.net(x)
        _, h2 = self.net(x2)
        return self.itra_loss(logits, y, h1, h2, y2).total

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--ckpt-path")
    p.add_argument("--save")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    train_set = TensorDataset(x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())
    itra = itra_tune.ITRACallback(train_set, batch_size=16, seed=1)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                        max_steps=args.max_steps, callbacks=[itra], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module = Module()
    trainer.fit(module, DataLoader(train_set, batch_size=16, shuffle=True), ckpt_path=args.ckpt_path)
    if args.save:
        trainer.save_checkpoint(args.save)
    state = {"s2": module.drawn, "loss_steps": module.itra_loss.steps, "watch_steps": module.itra_loss.watch.steps,
             "logged": sorted(k for k in trainer.callback_metrics if k.startswith("itra/"))}
    Path(args.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(state))


if __name__ == "__main__":
    main()
