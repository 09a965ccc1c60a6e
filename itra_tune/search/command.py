"""The command line ``python -m itra_tune.search``: flags in, ``search.run`` out, an exit code back."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from itra_tune import cli, spaces
from itra_tune.config import ConfigError
from itra_tune.search import DEFAULT_STORAGE, OBJECTIVES, _run

PROG = "python -m itra_tune.search"


EXAMPLES = f"""\
examples:
  {PROG}                          the demo space: 8 trials on the bundled digits
  {PROG} --space cifar100 --num-samples 32
  {PROG} --space demo --smoke     a handful of short trials, to try a space
  {PROG} --set loss.lam=0.1 --set optim.lr=0.05   (--set repeats)
  {PROG} --name mine --resume     continue the search "mine" after Ctrl-C or a crash
  python -m itra_tune.train --space demo --best   train the newest search's winner for production

"""


def _epilog() -> str:
    listed = textwrap.fill(", ".join(spaces.names()) + " (or the path of a YAML file of your own)", width=100,
                           initial_indent="spaces: ", subsequent_indent="  ")
    return EXAMPLES + listed


def parser() -> cli.Parser:
    p = cli.Parser(prog=PROG, description="Search a space with Ray Tune, Optuna and MLflow.",
                   epilog=_epilog(),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="demo", help="a name from search_spaces/ or a YAML path (default demo)")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the space's budget)")
    p.add_argument("--max-concurrent", type=int, help="trials in flight at once")
    p.add_argument("--confirm-share", type=float, metavar="SHARE",
                   help="the share of the trials that re-trains the best candidates on fresh seeds after exploring, "
                        "choosing on the mean (default: the space's, else 0.25; 0: none)")
    p.add_argument("--confirm-candidates", type=int, metavar="N",
                   help="how many of the best candidates the confirmation re-trains (default: the space's, else 2)")
    p.add_argument("--cpus-per-trial", type=float,
                   help="CPUs each trial (or each of its data-parallel workers) holds (default: the space's)")
    p.add_argument("--gpus-per-trial", type=float, help="fractions let several small trials share a GPU")
    p.add_argument("--workers-per-trial", type=int,
                   help="data-parallel workers per trial (Ray Train); --cpus/--gpus-per-trial are each worker's")
    p.add_argument("--scheduler", type=cli.choice("a scheduler", spaces.SCHEDULERS),
                   metavar="{" + ",".join(spaces.SCHEDULERS) + "}", help="early stopping (default: the space's)")
    p.add_argument("--trainable", metavar="PACKAGE.MODULE:FUNCTION",
                   help="search your own training function fn(config, report) instead of the engine (default: the "
                        "space's own, else the engine)")
    p.add_argument("--objective", type=cli.choice("an objective", OBJECTIVES), default="single",
                   metavar="{" + ",".join(OBJECTIVES) + "}",
                   help="acc_ce: validation accuracy (max) and CE (min) together; reports the Pareto front")
    p.add_argument("--methods", help="losses to compare, one search each, e.g. ce,lsr,center,itra_c")
    p.add_argument("--equal-compute", action="store_true",
                   help="give --methods equal compute, not equal trials: trials in inverse proportion to each "
                        "method's measured step cost")
    p.add_argument("--address", help="join an existing Ray cluster (default: start a local one)")
    p.add_argument("--storage-path", help=f"where experiments live, shared on a cluster (default {DEFAULT_STORAGE})")
    p.add_argument("--name", help="experiment name (default <space>-<time>); with --resume, the one to continue")
    p.add_argument("--resume", action="store_true",
                   help="continue the experiment --name after Ctrl-C, a crash or a kill, as it was started")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="database of the Optuna study, e.g. postgresql://host/db for a cluster (default: "
                        "optuna.db in the experiment's folder)")
    p.add_argument("--optuna-study", metavar="NAME",
                   help="name of the stored Optuna study (default: the experiment's); drivers naming one study in "
                        "one --optuna-storage share it, each sampling from every driver's finished trials")
    p.add_argument("--warm-start", metavar="NAME",
                   help="start from the earlier search NAME: its trials seed the sampler, its best runs first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base configuration, e.g. loss.lam=0.1; repeat it for more keys")
    p.add_argument("--smoke", action="store_true", help="a handful of short trials, to try a space")
    p.add_argument("--max-failures", type=int,
                   help="retries of a failing trial from its checkpoint (default: 2 with --address, where a lost "
                        "node's trials continue on another; else 0)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--register", action="store_true", help="register the best model as itra-<space> in MLflow")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's status table and Ray's, Optuna's and MLflow's own messages instead of the compact view")
    p.add_argument("--log-models", default="3", metavar="K|all",
                   help="log the best K trials' checkpoints as MLflow models (default 3; all: every trial's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    space = args.pop("space")
    args["overrides"] = tuple(args.pop("set"))
    args["methods"] = tuple(m.strip() for m in args["methods"].split(",") if m.strip()) if args["methods"] else ()
    k = args["log_models"]
    if k != "all" and not k.isdigit():
        raise ConfigError(f"--log-models takes a count or all, not {k!r}")
    args["log_models"] = None if k == "all" else int(k)
    summaries = _run(space, args, ending=True)
    last = summaries[-1]
    if last["interrupted"]:
        print(f"interrupted {interruption(last)}; continue with: {last['resume_command']}", file=sys.stderr)
        return 130
    return cli.EXIT_OK if all(s.get("best") for s in summaries) else cli.EXIT_FAILED


def interruption(s: dict[str, object]) -> str:
    """How far an interrupted search got: the trials that ended and those cut while training, apart."""
    if not s.get("best"):
        return "before any trial finished an epoch"
    ended = sum(int(s.get(k, 0)) for k in ("completed", "stopped early", "failed", "collapsed"))
    cut = int(s.get("interrupted_trials", 0))
    return f"with {ended} of {s['num_samples']} trials ended" + (f" and {cut} cut while training" if cut else "")


if __name__ == "__main__":
    cli.exit_now(cli.run(PROG, main))
