"""Train one configuration, without Ray: ``python -m itra_tune.train --config FILE.yaml [--set k=v ...]``.

Also importable: ``itra_tune.train(config, out_dir=...)`` runs the same engine a search runs, and writes
the resolved configuration, per-epoch metrics and the best checkpoint (by validation accuracy) to
``out_dir``. Nothing is written before the first epoch ends, so bad input leaves no half-made folder.
"""

from __future__ import annotations

import json
import math
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from itra_tune import checkpoint, cli, engine, spaces
from itra_tune import config as config_mod
from itra_tune.config import Config


class RunDir:
    """A run's output folder, made on first write: config.yaml, metrics.jsonl, best.pt, last.pt."""

    def __init__(self, path: Path, cfg: Config) -> None:
        self.path, self.cfg, self._made = path, cfg, False
        self.best_acc = -math.inf

    def _make(self) -> None:
        if self._made:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"code_version": config_mod.code_version()}
        text = "# " + json.dumps(meta) + "\n" + yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        (self.path / "config.yaml").write_text(text)
        self._made = True

    def __call__(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        self._make()
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        checkpoint.save(state, self.path / "last.pt")
        # with no validation split, "val" is the test split: select nothing on it, keep the last epoch
        if metrics["val_acc"] > self.best_acc or self.cfg.data.val_fraction == 0.0:
            self.best_acc = metrics["val_acc"]
            checkpoint.save({"model": state["model"], "config": state["config"], "metrics": metrics},
                            self.path / "best.pt")


def train(config: Config, out_dir: str | Path | None = None, progress: bool = False,
          resume: str | Path | None = None, full_train: bool = False) -> engine.FitResult:
    """Train ``config`` with the ITRA engine; optionally record the run in ``out_dir``.

    Args:
        config: the training configuration (``itra_tune.load_config`` or ``itra_tune.best_config``).
        out_dir: folder for config.yaml, metrics.jsonl, best.pt and last.pt; None writes nothing.
        progress: show a progress bar.
        resume: a ``last.pt`` from an earlier run of the same configuration, to continue it.
        full_train: fold the validation split back into training; best.pt is then the last epoch,
            since nothing held out is left to select on.

    Returns:
        The engine's FitResult: the model, the per-epoch history and the best epoch.
    """
    if full_train:
        config = config_mod.override(config, {"data.val_fraction": 0.0})
    engine.check(config)
    engine.check_available(config)
    state = checkpoint.load(resume) if resume is not None else None
    report = RunDir(Path(out_dir), config) if out_dir is not None else None
    return engine.fit(config, report=report, resume=state, progress=progress)


def over_seeds(config: Config, seeds: int, out_dir: str | Path | None = None, full_train: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Train ``config`` with seeds ``config.seed``, ``config.seed + 1``, ...; mean and std of the final epoch.

    Returns:
        ``{"seeds": [...], "results": [FitResult, ...], "test_acc": (mean, std), "test_ce": (mean, std)}``,
        std being the sample standard deviation (0 for one seed).
    """
    import statistics

    seed_list = [config.seed + i for i in range(seeds)]
    results = []
    for s in seed_list:
        sub = Path(out_dir) / f"seed_{s}" if out_dir is not None else None
        results.append(train(config_mod.override(config, {"seed": s}), sub, progress, full_train=full_train))
    out: dict[str, Any] = {"seeds": seed_list, "results": results}
    for key in ("test_acc", "test_ce"):
        values = [r.history[-1][key] for r in results]
        out[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def _format(row: dict[str, float], epochs: int) -> str:
    return (f"epoch {int(row['epoch']):>3}/{epochs}  train_ce {row['train_ce']:.4f}  "
            f"match {row['match_loss']:.4f}  val_acc {100 * row['val_acc']:.2f}%  val_ce {row['val_ce']:.4f}  "
            f"test_acc {100 * row['test_acc']:.2f}%  test_ce {row['test_ce']:.4f}  "
            f"compact {row['compactness']:.3f}  {row['epoch_time']:.1f}s")


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.Parser(prog="python -m itra_tune.train", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a training configuration YAML file")
    src.add_argument("--space", help="a search space name or file: train its base configuration")
    p.add_argument("--best", action="store_true", help="with --space: the best configuration of its newest search")
    p.add_argument("--tracking-uri", help="where that search tracked (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--full-train", action="store_true", help="train on the validation split too")
    p.add_argument("--seeds", type=int, default=1, help="train with N seeds; report mean and std")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    p.add_argument("--out", help="output folder (default runs/train/<name>-<time>)")
    p.add_argument("--resume", help="continue from a last.pt of the same configuration")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    if args.best and not args.space:
        raise config_mod.ConfigError("--best needs --space, the space whose search to take the winner of")
    if args.seeds < 1:
        raise config_mod.ConfigError(f"--seeds must be at least 1 but got {args.seeds}")
    if args.config:
        cfg, name = config_mod.load(args.config, args.set), Path(args.config).stem
    elif args.best:
        from itra_tune.best import best_config

        name = Path(args.space).stem
        best = best_config(name, args.tracking_uri)
        cfg = config_mod.from_dict(config_mod.apply_overrides(best.to_dict(), args.set), f"best of {name}")
        name += "-best"
    else:
        space = spaces.load(args.space)
        cfg, name = space.base_config(args.set), space.name
    if args.full_train:
        cfg = config_mod.override(cfg, {"data.val_fraction": 0.0})
    if args.seeds > 1:
        return _main_seeds(cfg, name, args)
    engine.check(cfg)
    engine.check_available(cfg)
    if args.resume and not Path(args.resume).is_file():
        raise config_mod.ConfigError(f"--resume {args.resume}: no such checkpoint; pass a last.pt of an earlier run")
    out = Path(args.out) if args.out else Path("runs") / "train" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rundir = RunDir(out, cfg)
    epochs = cfg.train.epochs

    def report(row: dict[str, float], state: dict[str, Any]) -> None:
        rundir(row, state)
        print(_format(row, epochs), flush=True)

    print(f"training {name}: {cfg.model.name} on {cfg.data.name}, loss {cfg.loss.name} "
          f"(lambda {cfg.loss.lam}, bandwidth {cfg.loss.bandwidth}), {epochs} epochs -> {out}", flush=True)
    state = checkpoint.load(args.resume) if args.resume else None
    try:
        result = engine.fit(cfg, report=report, resume=state, progress=not args.quiet and sys.stderr.isatty())
    except engine.Diverged as e:
        print(f"python -m itra_tune.train: run failed: {e}", file=sys.stderr)
        return cli.EXIT_FAILED
    b = result.best
    print(f"best epoch {int(b['epoch'])}: val_acc {100 * b['val_acc']:.2f}%  test_acc {100 * b['test_acc']:.2f}%  "
          f"test_ce {b['test_ce']:.4f}; saved {out / 'best.pt'}")
    return cli.EXIT_OK


def _main_seeds(cfg: Config, name: str, args: Any) -> int:
    engine.check(cfg)
    engine.check_available(cfg)
    out = Path(args.out) if args.out else Path("runs") / "train" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {name} over {args.seeds} seeds -> {out}", flush=True)
    try:
        res = over_seeds(cfg, args.seeds, out, progress=not args.quiet and sys.stderr.isatty())
    except engine.Diverged as e:
        print(f"python -m itra_tune.train: run failed: {e}", file=sys.stderr)
        return cli.EXIT_FAILED
    for s, r in zip(res["seeds"], res["results"]):
        print(f"seed {s}: " + _format(r.history[-1], cfg.train.epochs))
    (acc, acc_sd), (ce, ce_sd) = res["test_acc"], res["test_ce"]
    print(f"final epoch over {args.seeds} seeds: test_acc {100 * acc:.2f} ± {100 * acc_sd:.2f}%  "
          f"test_ce {ce:.4f} ± {ce_sd:.4f}")
    return cli.EXIT_OK


class _CallableModule(types.ModuleType):
    # `itra_tune.train` is both this module (for `python -m itra_tune.train`) and the function: Python's
    # import system binds the package attribute to the module, so the module forwards calls to train().
    def __call__(self, *args: Any, **kwargs: Any) -> engine.FitResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(cli.run("python -m itra_tune.train", main))
