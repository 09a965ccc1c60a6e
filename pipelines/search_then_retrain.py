"""Search a space, then retrain its best configuration on the whole training set and report the test split.

    .venv/bin/python pipelines/search_then_retrain.py --space demo [--smoke] [--out runs/prod/demo]

The search selects on the validation split; the retrain folds that split back into training
(``data.val_fraction=0``), so its reported validation figures are the test split's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import itra_tune
from itra_tune import cli, config, search


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="demo")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--storage-path", default=str(search.DEFAULT_STORAGE))
    p.add_argument("--out", help="folder of the retrained model (default runs/prod/<space>-<time>)")
    args = p.parse_args(argv)
    name = f"{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    code = cli.run("search", search.main, ["--space", args.space, "--name", name, "--storage-path",
                                           args.storage_path] + (["--smoke"] if args.smoke else []))
    if code != 0:
        return code
    best = Path(args.storage_path) / name / "best_config.yaml"
    cfg = config.load(best, ["data.val_fraction=0"])
    out = Path(args.out or Path("runs") / "prod" / name)
    result = itra_tune.train(cfg, out_dir=out)
    last = result.history[-1]
    print(f"retrained on the full training set: test_acc {100 * last['test_acc']:.2f}%  "
          f"test_ce {last['test_ce']:.4f}; model and configuration in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
