"""To production: search a space, retrain the winner on the full training set over seeds, register the model in
MLflow's registry and export it for serving code.

    python pipelines/search_then_retrain.py --space demo [--smoke] [--seeds 3] [--out runs/prod/demo]

Without ``--out`` the retrained runs and the export go to ``runs/prod/<space>-<time>``; the last line prints where.

The search selects on the validation split; the retrain folds that split back into training
(``data.val_fraction=0``), trains to the epoch the search selected (of the same schedule) and reports the test split
there as mean and std over the seeds. The model of the
configuration's own seed (reproducible with ``itra_tune.train(config)``) is logged as an MLflow LoggedModel,
registered as ``itra-<space>`` and exported to ``<out>/export``: ``itra_tune.load_exported("<out>/export")``
rebuilds it in one call, and ``model.pt2`` (``torch.export``, where the model exports) loads with torch alone.
All of them take what the data gives a user: image pixels in [0, 1]; they return logits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import itra_tune
from itra_tune import cli, config, export, search, tracking
from itra_tune import data as data_mod

DEFAULT_OUT = "runs/prod/<space>-<time>"  # without --out: the export goes to DEFAULT_OUT/export


def parser() -> cli.Parser:
    p = cli.Parser(prog="python pipelines/search_then_retrain.py", description=__doc__.splitlines()[0])
    p.add_argument("--space", default="demo", help="a name from search_spaces/ or a YAML path (default demo)")
    p.add_argument("--smoke", action="store_true", help="the space's smoke budget")
    p.add_argument("--seeds", type=int, default=3, help="retraining seeds (default 3)")
    p.add_argument("--storage-path", default=str(search.DEFAULT_STORAGE))
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--no-register", action="store_true", help="skip the MLflow Model Registry")
    p.add_argument("--out", help=f"folder of the retrained runs and the export (default {DEFAULT_OUT})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.seeds < 1:
        raise config.ConfigError(f"--seeds must be at least 1 but got {args.seeds}")
    uri = tracking.resolve_uri(args.tracking_uri)
    space = Path(args.space).stem
    name = f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"
    (summary,) = search.run(args.space, name=name, storage_path=args.storage_path, tracking_uri=uri, smoke=args.smoke)
    if summary["interrupted"]:
        print(f"interrupted; continue the search with: {summary['resume_command']}", file=sys.stderr)
        return 130
    if not summary.get("best"):
        print(f"no trial of the search finished; see {summary['experiment_path']}", file=sys.stderr)
        return cli.EXIT_FAILED
    cfg = config.from_dict(summary["best_config"], f"best of {name}")
    out = Path(args.out or DEFAULT_OUT.replace("<space>-<time>", name))

    print(f"retraining the best configuration on the full training set to its selected epoch {cfg.select.epoch}, "
          f"{args.seeds} seeds -> {out}", flush=True)
    res = itra_tune.train.over_seeds(cfg, args.seeds, out, full_train=True)
    (acc, acc_sd), (ce, ce_sd) = res["test_acc"], res["test_ce"]
    own = res["results"][0]  # the configuration's own seed
    model, last = own.model, own.best  # full_train stops at the search's selected epoch: the last is the selected
    metrics = {"test_acc_mean": acc, "test_acc_std": acc_sd, "test_ce_mean": ce, "test_ce_std": ce_sd,
               "test_acc": last["test_acc"], "test_ce": last["test_ce"]}
    example = data_mod.build(cfg.data, torch.device("cpu"), cfg.seed, paired=False,
                             model_name=cfg.model.name).sample("test", 8)[0]
    exported = export.save(model, config.override(cfg, {"data.val_fraction": 0.0}), out / "export", example,
                           metrics)

    run_id, model_id, registered = tracking.log_production(
        uri, space, f"{name}-production", params=cfg.flat(written=True) | {"seeds": args.seeds}, metrics=metrics,
        model=tracking.ModelFiles(exported, example.numpy(), export.predictions(model.eval(), example),
                                  int(last["epoch"])),
        register_as=None if args.no_register else f"itra-{space}")
    print(f"full training set, epoch {int(last['epoch'])}, {args.seeds} seeds: test_acc {100 * acc:.2f} ± "
          f"{100 * acc_sd:.2f}%  test_ce {ce:.4f} ± {ce_sd:.4f}")
    print(f"MLflow: run {run_id} in experiment {space!r}, model models:/{model_id}"
          + (f", registered as {registered}" if registered else ""))
    print(f"export: {exported} (load with itra_tune.load_exported({str(exported)!r}); "
          f"standalone program: {export.json_meta(exported)['standalone']})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run("python pipelines/search_then_retrain.py", main))
