"""Production training, without Ray: ``itra_tune.train(config, out_dir=...)`` and its command line
``python -m itra_tune.train --config FILE.yaml [--set k=v ...]``.

It runs the same engine a search runs and writes the resolved configuration, per-epoch metrics and the selected
checkpoint to ``out_dir``, chosen by the search's rule (``itra_tune.selection``, the configuration's ``select``):
retraining a search's best configuration selects the epoch the search selected. ``full_train`` folds the
validation split back into training; nothing is left to select on, so the run trains to the search's selected
epoch (``select.epoch``) of the same schedule and hands that over. Nothing is written before the first epoch
ends, so bad input leaves no half-made folder.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from itra_tune import checkpoint, cli, engine, selection, spaces
from itra_tune import config as config_mod
from itra_tune.config import Config


class RunDir:
    """A run's output folder, made on first write: config.yaml, metrics.jsonl, best.pt (the epoch the run hands
    over, ``itra_tune.selection``), last.pt."""

    def __init__(self, path: Path, cfg: Config) -> None:
        self.path, self.cfg, self._made = path, cfg, False
        self.best_epoch: int | None = None  # the epoch best.pt holds

    def _make(self) -> None:
        if self._made:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"code_version": config_mod.code_version()}
        text = "# " + json.dumps(meta) + "\n" + yaml.safe_dump(self.cfg.written(), sort_keys=False)
        (self.path / "config.yaml").write_text(text)
        self._made = True

    def __call__(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        self._make()
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        checkpoint.save(state, self.path / "last.pt")
        # best.pt is the epoch the run would hand over if it ended now (the engine keeps every epoch that may
        # still be, ``selection.contenders``); without a validation split training stops at the search's selected
        # epoch (or runs to the last), and best.pt follows the latest epoch. Never the test split's
        chosen = selection.handed_over(state["history"], self.cfg.select)
        weights = engine.weights_at(state, int(chosen["epoch"]))
        if weights is not None and int(chosen["epoch"]) != self.best_epoch:
            self.best_epoch = int(chosen["epoch"])
            checkpoint.save({"model": weights, "config": state["config"], "metrics": chosen}, self.path / "best.pt")


def prepare(config: Config, full_train: bool = False) -> Config:
    """The configuration as it will train, checked: names, device, data and model files.

    ``full_train`` folds the validation split back into training (``data.val_fraction = 0``).
    """
    if full_train:
        config = config_mod.override(config, {"data.val_fraction": 0.0})
    engine.check(config)
    engine.check_available(config)
    return config


def train(config: Config, out_dir: str | Path | None = None, progress: bool = False,
          resume: str | Path | None = None, full_train: bool = False,
          on_epoch: Callable[[dict[str, float]], None] | None = None) -> engine.FitResult:
    """Train ``config`` with the ITRA engine; optionally record the run in ``out_dir``.

    Args:
        config: the training configuration (``itra_tune.load_config`` or ``itra_tune.best_config``).
        out_dir: folder for config.yaml, metrics.jsonl, best.pt and last.pt; None writes nothing.
        progress: show a progress bar.
        resume: a ``last.pt`` from an earlier run of the same configuration, to continue it.
        full_train: fold the validation split back into training; nothing held out is left to select on, so
            training stops at ``config.select.epoch`` (a search's selected epoch; else the last) and best.pt is it.
        on_epoch: called with each epoch's metrics (after they are written).

    Returns:
        The engine's FitResult: the model, the per-epoch history and the best epoch.

    Raises:
        ConfigError: bad input, before anything is written. engine.Diverged: the loss became NaN or infinite.
    """
    config = prepare(config, full_train)
    if resume is not None and not Path(resume).is_file():
        raise config_mod.ConfigError(f"--resume {resume}: no such checkpoint; pass a last.pt of an earlier run")
    state = checkpoint.load(resume) if resume is not None else None
    run_dir = RunDir(Path(out_dir), config) if out_dir is not None else None

    def report(metrics: dict[str, float], snapshot: dict[str, Any]) -> None:
        if run_dir is not None:
            run_dir(metrics, snapshot)
        if on_epoch is not None:
            on_epoch(metrics)

    return engine.fit(config, report=report, resume=state, progress=progress)


def over_seeds(config: Config, seeds: int, out_dir: str | Path | None = None, full_train: bool = False,
               progress: bool = False, on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``config`` with seeds ``config.seed``, ``config.seed + 1``, ...; mean and std of each seed's handed-over
    epoch (``FitResult.best``: selected by ``config.select``, or the search's selected epoch under ``full_train``).

    Returns:
        ``{"seeds": [...], "results": [FitResult, ...], "test_acc": (mean, std), "test_ce": (mean, std)}``,
        std being the sample standard deviation (0 for one seed).
    """
    import statistics

    if seeds < 1:
        raise config_mod.ConfigError(f"--seeds must be at least 1 but got {seeds}")
    prepare(config, full_train)  # every seed would fail alike: say so once, before the first
    seed_list = [config.seed + i for i in range(seeds)]
    results = []
    for s in seed_list:
        sub = Path(out_dir) / f"seed_{s}" if out_dir is not None else None
        results.append(train(config_mod.override(config, {"seed": s}), sub, progress, full_train=full_train,
                             on_epoch=on_epoch))
    out: dict[str, Any] = {"seeds": seed_list, "results": results}
    for key in ("test_acc", "test_ce"):
        values = [r.best[key] for r in results]
        out[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


train.over_seeds = over_seeds  # type: ignore[attr-defined]  # itra_tune.train.over_seeds(config, n)


def format_epoch(row: dict[str, float], epochs: int) -> str:
    val = f"val_acc {100 * row['val_acc']:.2f}%  val_ce {row['val_ce']:.4f}  " if "val_acc" in row else ""
    return (f"epoch {int(row['epoch']):>3}/{epochs}  train_ce {row['train_ce']:.4f}  match {row['match_loss']:.4f}  "
            f"{val}test_acc {100 * row['test_acc']:.2f}%  test_ce {row['test_ce']:.4f}  "
            f"compact {row['compactness']:.3f}  {row['epoch_time']:.1f}s")


def parser() -> cli.Parser:
    p = cli.Parser(prog="python -m itra_tune.train", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a training configuration YAML file")
    src.add_argument("--space", help="a search space name or file: train its base configuration")
    p.add_argument("--best", action="store_true",
                   help="with --space: the best configuration of its newest search (not a --smoke one)")
    p.add_argument("--search", help="with --best: the search to take it from, by name (default the newest)")
    p.add_argument("--smoke", action="store_true",
                   help="with --best: the newest search may be a --smoke one (a handful of short trials)")
    p.add_argument("--tracking-uri", help="where that search tracked (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--full-train", action="store_true", help="train on the validation split too")
    p.add_argument("--seeds", type=int, default=1, help="train with N seeds; report mean and std")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    p.add_argument("--out", help="output folder (default runs/train/<name>-<time>)")
    p.add_argument("--resume", help="continue from a last.pt of the same configuration")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: Any) -> tuple[Config, str]:
    """The configuration the command line names, and a name for its run folder."""
    if args.best and not args.space:
        raise config_mod.ConfigError("--best needs --space, the space whose search to take the winner of")
    if (args.search or args.smoke) and not args.best:
        flag = "--search" if args.search else "--smoke"
        raise config_mod.ConfigError(f"{flag} says which search --best takes the winner of; add --best --space")
    if args.config:
        return config_mod.load(args.config, args.set), Path(args.config).stem
    if args.best:
        from itra_tune.best import best_config, chosen_search

        name = Path(args.space).stem
        best = best_config(name, args.tracking_uri, search=args.search, smoke=args.smoke)
        search, smoke = chosen_search(name, args.tracking_uri, search=args.search, smoke=args.smoke)
        print(f"the best configuration of the search {search}"
              + (": a --smoke search, whose trials were short; a full search's winner is the one to ship"
                 if smoke else ""), flush=True)
        return config_mod.from_dict(config_mod.apply_overrides(best.to_dict(), args.set), f"best of {name}"), \
            f"{name}-best"
    space = spaces.load(args.space)
    return space.base_config(args.set), space.name


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.seeds < 1:
        raise config_mod.ConfigError(f"--seeds must be at least 1 but got {args.seeds}")
    cfg, name = config_from_args(args)
    if args.seeds > 1 and args.resume:
        raise config_mod.ConfigError("--resume continues one run; drop --seeds or --resume")
    cfg = prepare(cfg, args.full_train)
    out = Path(args.out) if args.out else Path("runs") / "train" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    epochs, progress = cfg.train.epochs, not args.quiet and sys.stderr.isatty()
    show = lambda row: print(format_epoch(row, epochs), flush=True)
    try:
        if args.seeds > 1:
            print(f"training {name} over {args.seeds} seeds -> {out}", flush=True)
            res = over_seeds(cfg, args.seeds, out, progress=progress)
            for s, r in zip(res["seeds"], res["results"]):
                print(f"seed {s}: " + format_epoch(r.best, epochs))
            (acc, acc_sd), (ce, ce_sd) = res["test_acc"], res["test_ce"]
            print(f"handed-over epochs ({selection.describe(cfg.select, cfg.data.val_fraction > 0)}) over "
                  f"{args.seeds} seeds: test_acc {100 * acc:.2f} ± {100 * acc_sd:.2f}%  test_ce {ce:.4f} ± {ce_sd:.4f}")
            return cli.EXIT_OK
        stop = selection.stop_epoch(cfg.select, epochs, validated=cfg.data.val_fraction > 0)
        length = f"{epochs} epochs" if stop == epochs else f"{stop} of {epochs} epochs (the search's selected epoch)"
        print(f"training {name}: {cfg.model.name} on {cfg.data.name}, loss {cfg.loss.name} "
              f"(lambda {cfg.loss.lam}, bandwidth {cfg.loss.bandwidth}), {length} -> {out}", flush=True)
        result = train(cfg, out, progress, resume=args.resume, on_epoch=show)
    except engine.Diverged as e:
        print(f"python -m itra_tune.train: run failed: {e}", file=sys.stderr)
        return cli.EXIT_FAILED
    b = result.best
    val = f"val_acc {100 * b['val_acc']:.2f}%  val_ce {b['val_ce']:.4f}  " if "val_acc" in b else ""
    print(f"handed over epoch {int(b['epoch'])} ({selection.describe(cfg.select, 'val_acc' in b)}): {val}"
          f"test_acc {100 * b['test_acc']:.2f}%  test_ce {b['test_ce']:.4f}; saved {out / 'best.pt'}")
    note = engine.unmatched(result.history, cfg.loss.lam)
    if note:
        print(f"note: {note}")
    return cli.EXIT_OK
