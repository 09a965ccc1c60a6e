"""A user's Lightning script with ITRACallback, as tests/test_lightning.py runs it (2 CPU processes under DDP).

    python lightning_ddp.py OUT --devices 2 --max-steps 4 [--ckpt-path CKPT] [--save CKPT] [--no-gather]

Each rank writes OUT/rank<r>.json: the labels of the S2 batches it drew, step by step, and its loss's state; and
OUT/rank<r>.pt: its first step (the model's weights before it, S1, S2, the loss's parts, the gradients
DistributedDataParallel averaged).
"""

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import itra_tune


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def loss() -> itra_tune.ITRALoss:
    # the paper's form: lambda applies from the first step, which the test compares
    return itra_tune.ITRALoss(num_classes=4, lam=0.5, form="paper")


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        model = network()
        self.net = itra_tune.split_model(model, head=model[2])
        self.itra_loss = loss()
        self.drawn: list[list[int]] = []
        self.first: dict = {}

    def training_step(self, batch, batch_idx):
        (x, y), (x2, y2) = batch, self.s2
        assert x2.device == self.device
        self.drawn.append(y2.tolist())
        if not self.first:
            self.first = {"weights": {k: v.clone() for k, v in self.net.state_dict().items()},
                          "x": x, "y": y, "x2": x2, "y2": y2}
        logits, h1 = self.net(x)
        _, h2 = self.net(x2)
        parts = self.itra_loss(logits, y, h1, h2, y2)
        if "parts" not in self.first:
            self.first["parts"] = [p.detach() for p in parts[:3]]
        return parts.total

    def on_after_backward(self):  # DistributedDataParallel has averaged the gradients
        if "grads" not in self.first:
            self.first["grads"] = {k: p.grad.clone() for k, p in self.net.named_parameters()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--ckpt-path")
    p.add_argument("--save")
    p.add_argument("--no-gather", action="store_true")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    train_set = TensorDataset(x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())
    itra = itra_tune.ITRACallback(train_set, batch_size=16, seed=1, gather=not args.no_gather)
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
    torch.save(module.first, Path(args.out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
