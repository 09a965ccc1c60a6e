"""Reproduce a table of the paper: for each row, search every method with the same budget on the validation
split, retrain each method's winner on the full training set over several seeds, and report the test figures
beside the paper's own.

    python pipelines/reproduce.py --table 1 --rows fmnist --reduced     # one row, CPU-sized protocol
    python pipelines/reproduce.py --table 2                              # every row, the spaces' protocol
    python pipelines/reproduce.py --space my_space.yaml --seeds 3         # a row of your own
    python pipelines/reproduce.py --list                                 # the published reports, their commands
    python pipelines/reproduce.py --only pairings-digits                 # one of them regenerated in place

Writes ``report.md``, ``report.json`` and the plots to ``--out``, and logs everything to MLflow under one
parent run in the experiment ``reproduce-table<N>``: a child run per retrained seed (metrics per epoch) and a
child run per searched method (linking the search's own parent run and experiment).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import itra_tune
from itra_tune import cli, plots, search, spaces, tracking
from itra_tune import config as config_mod
from itra_tune.config import ConfigError

HERE = Path(__file__).resolve().parent
TABLES = HERE / "paper_tables.yaml"
RESULTS = HERE.parent / "docs" / "results"  # the published reports, a folder each
# options that name the machine a report was made on: not recorded in its command, which --only runs with this
# machine's (its own command line, the defaults, $ITRA_TUNE_DATA for the data's root)
MACHINE = ("--tracking-uri", "--storage-path")
METHODS = ("ce", "lsr", "center", "itra_c")
REDUCED = {"epochs": 5, "subset": 12000, "num_samples": 4}  # defaults of --reduced, each its own flag too


def parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python pipelines/reproduce.py", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--table", type=int, choices=(1, 2, 3, 4), help="a table of the paper")
    src.add_argument("--space", help="one row of your own: a space name or YAML file (no paper numbers)")
    src.add_argument("--list", action="store_true", help="the published reports: each one's name, whether it ran "
                                                         "with today's defaults, and the command that made it")
    src.add_argument("--only", metavar="NAME", help="regenerate the published report NAME (see --list) in place, "
                                                    "by the command that made it")
    p.add_argument("--rows", help="comma-separated rows of the table (default all), e.g. fmnist")
    p.add_argument("--methods", default=",".join(METHODS), help=f"default {','.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=3, help="retraining seeds per method (at least 3 for a report)")
    p.add_argument("--reduced", action="store_true",
                   help=f"fewer epochs, a training subset and fewer trials (default {REDUCED})")
    p.add_argument("--epochs", type=int, help="epochs per trial and retrain (with --reduced: default "
                                                f"{REDUCED['epochs']})")
    p.add_argument("--subset", type=int, help=f"training examples, 0 for all (with --reduced: default "
                                               f"{REDUCED['subset']})")
    p.add_argument("--num-samples", type=int, help="trials per method (default: the space's; with --reduced "
                                                   f"{REDUCED['num_samples']})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every row's base")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--storage-path", default=str(search.DEFAULT_STORAGE), help="where the searches live")
    p.add_argument("--out", help="report folder (default runs/reproduce/<table>-<time>)")
    return p


def plan(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(experiment, title, {row: paper numbers per method or None}), checked before anything runs."""
    if args.space:
        name = Path(args.space).stem
        spaces.load(args.space)
        return f"reproduce-{name}", f"Space {name}", {args.space: None}
    tables = yaml.safe_load(TABLES.read_text())
    table = tables[args.table]
    rows = table["rows"]
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [r for r in wanted if r not in rows]
        if unknown:
            raise ConfigError(f"--rows: {unknown[0]!r} is not a row of Table {args.table}; "
                              f"choose from {', '.join(rows)}")
        rows = {r: rows[r] for r in wanted}
    for row in rows:
        spaces.load(row)
    return f"reproduce-table{args.table}", table["title"], rows


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """What ran, for the report: the budget and the overrides given to every search and retrain."""
    reduced = args.reduced or any(v is not None for v in (args.epochs, args.subset, args.num_samples))
    epochs = args.epochs or (REDUCED["epochs"] if args.reduced else None)
    subset = args.subset if args.subset is not None else (REDUCED["subset"] if args.reduced else None)
    subset = subset or None  # --subset 0: the whole training set
    samples = args.num_samples or (REDUCED["num_samples"] if args.reduced else None)
    sets = list(args.set) + [f"train.epochs={epochs}"] * bool(epochs) + [f"data.subset={subset}"] * bool(subset)
    return {"name": "reduced" if reduced else "full", "epochs": epochs or "the space's", "subset": subset or "all",
            "trials_per_method": samples or "the space's", "seeds": args.seeds, "overrides": sets,
            "selection": "each method's search selects its trial and epoch on the validation split (the space's "
                         "rule, itra_tune.selection); its winner is retrained on train + validation to that epoch; "
                         "figures on the test split at that epoch"}


def search_row(row: str, methods: list[str], proto: dict[str, Any], args: argparse.Namespace,
               stem: str, uri: str) -> dict[str, dict[str, Any]]:
    """Search every method of one row with the same budget; each method's search summary."""
    samples = proto["trials_per_method"]
    summaries = search.run(row, methods=tuple(methods), name=f"{stem}-{Path(row).stem}",
                           storage_path=args.storage_path, tracking_uri=uri, overrides=tuple(proto["overrides"]),
                           num_samples=samples if isinstance(samples, int) else None)
    if summaries[-1]["interrupted"]:
        print(f"interrupted; continue the search with: {summaries[-1]['resume_command']}", file=sys.stderr)
        raise SystemExit(130)
    failed = [m for m, s in zip(methods, summaries) if not s.get("best")]
    if failed:
        print(f"no trial of {Path(row).stem} {failed[0]} finished; see {summaries[0]['experiment_path']}",
              file=sys.stderr)
        raise SystemExit(cli.EXIT_FAILED)
    return dict(zip(methods, summaries))


def retrain(summary: dict[str, Any], seeds: int, runs: Path, tracker: tracking.Tracker, row: str,
            method: str) -> dict[str, Any]:
    """The method's best configuration, retrained on the full training set with ``seeds`` seeds; each seed's
    run folder (configuration, metrics, checkpoints) goes under ``runs``."""
    cfg = config_mod.from_dict(summary["best_config"], f"best of {summary['space']}")
    finals, histories = [], []
    for i in range(seeds):
        seed_cfg = config_mod.override(cfg, {"seed": cfg.seed + i})
        run_key = f"{row}/{method}/seed{seed_cfg.seed}"
        params = {"row": row, "method": method, **seed_cfg.flat(written=True)}
        tracker.trial_started(run_key, f"{Path(row).stem}-{method}-seed{seed_cfg.seed}", params)
        result = itra_tune.train(seed_cfg, out_dir=runs / search.method_slug(method) / f"seed_{seed_cfg.seed}",
                                 full_train=True)
        tracker.finish_trial(run_key, run_key, params, result.history, "completed", None)
        finals.append(result.best)  # full_train: the search's selected epoch
        histories.append(result.history)
        print(f"  {Path(row).stem} {method} seed {seed_cfg.seed}: test_acc {100 * finals[-1]['test_acc']:.2f}%  "
              f"test_ce {finals[-1]['test_ce']:.4f}", flush=True)

    def mean_sd(key: str, scale: float = 1.0) -> tuple[float, float]:
        values = [scale * f[key] for f in finals]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    tracker.set_parent_tag(f"search.{Path(row).stem}.{search.method_slug(method)}",
                           summary.get("tracking", {}).get("parent_run_id", ""))
    return {"lam": {"ce": None, "lsr": cfg.loss.eps}.get(method, cfg.loss.lam),  # lsr: its epsilon
            "seconds_per_epoch": statistics.fmean(r["epoch_time"] for h in histories for r in h),
            "compactness": mean_sd("compactness"),
            "acc": mean_sd("test_acc", 100.0), "ce": mean_sd("test_ce"), "val_acc": 100 * summary["best"]["val_acc"],
            "per_seed": [{"acc": 100 * f["test_acc"], "ce": f["test_ce"]} for f in finals],
            "histories": histories, "config": cfg.to_dict()}


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report_table(row: str, results: dict[str, Any], paper: dict[str, Any] | None, seeds: int) -> list[str]:
    """The row in the paper's form: lambda, accuracy and CE (mean ± std over seeds), the paper's, the gap."""
    forms = sorted({r["config"]["loss"].get("form", "paper") for m, r in results.items() if m.startswith("itra")})
    form_line = [f"ITRA's form: {', '.join(forms)} (`loss.form`; `paper` is the paper's exact form).", ""] \
        if forms else []
    lines = [f"### {Path(row).stem}", "", *form_line,
             f"| method | λ (ours) | test acc % (mean ± std, {seeds} seeds) | test CE (mean ± std) | "
             "compactness (mean ± std) | s/epoch | λ (paper) | acc % (paper) | CE (paper) | acc gap | CE gap |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        p = (paper or {}).get(method)
        p_lam, p_acc, p_ce = p if p else (None, None, None)
        gap_acc = r["acc"][0] - p_acc if p_acc is not None else None
        gap_ce = r["ce"][0] - p_ce if p_ce is not None else None
        lines.append(
            f"| {method} | {_cell(r['lam'], '.3g')}{' (ε)' if method == 'lsr' else ''} "
            f"| {r['acc'][0]:.2f} ± {r['acc'][1]:.2f} | {r['ce'][0]:.3f} ± {r['ce'][1]:.3f} "
            f"| {r['compactness'][0]:.3f} ± {r['compactness'][1]:.3f} | {r['seconds_per_epoch']:.1f} "
            f"| {_cell(p_lam, '.3g')} | {_cell(p_acc, '.2f')} | {_cell(p_ce, '.3f')} "
            f"| {_cell(gap_acc, '+.2f')} | {_cell(gap_ce, '+.3f')} |")
    return lines + [""] + against_ce(results, seeds)


def against_ce(results: dict[str, Any], seeds: int) -> list[str]:
    """Each method against CE under the same selection, in words: its gain in accuracy and in test CE, and whether
    that gain is beyond the noise (more than twice the standard error of the difference of two means over
    ``seeds`` seeds) or within it."""
    if "ce" not in results or seeds < 2:
        return []

    def verdict(key: str, better: int, fmt: str) -> str:
        (m, s), (m0, s0) = results[method][key], results["ce"][key]
        diff, se = m - m0, ((s * s + s0 * s0) / seeds) ** 0.5
        word = "within the noise" if abs(diff) <= 2 * se else "better" if better * diff > 0 else "worse"
        return f"{diff:+{fmt}}, {word} (2 SE {2 * se:{fmt}})"

    lines = []
    for method in results:
        if method != "ce":
            plain = " (its search chose λ 0: it trained as plain CE)" if results[method]["lam"] == 0 else ""
            lines.append(f"- {method} against CE: accuracy (points) {verdict('acc', 1, '.2f')}; "
                         f"test CE {verdict('ce', -1, '.3f')}{plain}")
    return [f"Against CE under the same selection, over {seeds} seeds (a gain beyond twice the standard error of "
            "the difference of the means is called better or worse):", "", *lines, ""]


def figures(row: str, results: dict[str, Any], paper: dict[str, Any] | None) -> dict[str, Any]:
    """Accuracy and CE per method against the paper's, and each method's test CE and compactness over epochs
    (the paper's Figures 2 and 1)."""
    stem = Path(row).stem
    ours = {m: (r["acc"], r["ce"]) for m, r in results.items()}
    theirs = {m: (p[1], p[2]) for m, p in (paper or {}).items() if p and m in results}
    return {f"{stem}_methods.png": plots.methods_vs_paper(f"{stem}: each method's best configuration, retrained",
                                                          ours, theirs),
            f"{stem}_test_ce.png": plots.seed_curves(f"{stem}: test loss over epochs, every seed",
                                                     {m: r["histories"] for m, r in results.items()}, "test_ce"),
            f"{stem}_compactness.png": plots.seed_curves(
                f"{stem}: compactness (lower: tighter classes)",
                {m: r["histories"] for m, r in results.items()}, "compactness")}


def published() -> dict[str, dict[str, Any]]:
    """The committed reports this script made, by folder name."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*/report.json"))}


def portable(args: list[str]) -> list[str]:
    """``args`` without the options that name the machine they ran on: MLflow's URI, the storage path and
    ``--set data.root=`` (a user's own come from their command line, the defaults or ``$ITRA_TUNE_DATA``)."""
    kept, rest = [], iter(args)
    for word in rest:
        if word.split("=", 1)[0] in MACHINE:
            if "=" not in word:
                next(rest, None)
        elif word == "--set" and (value := next(rest, "")).startswith("data.root="):
            continue
        else:
            kept += [word, value] if word == "--set" else [word]
    return kept


def recipe(name: str, command: str) -> list[str]:
    """The arguments that regenerate report ``name`` from its recorded ``command`` here, written back to its own
    folder."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith(("reproduce.py", "pipelines.reproduce"))) + 1
    args = portable(words[start:])
    if "--out" in args:
        del args[args.index("--out"):args.index("--out") + 2]
    args = [a for a in args if not a.startswith("--out=")]
    return args + ["--out", os.path.relpath(RESULTS / name)]


def list_reports() -> int:
    for name, report in published().items():
        stale = report.get("stale")
        state = (f"stale since {stale['since']}" if stale else
                 f"{report.get('loss_form')}, {report.get('selection_rule')} at {report.get('code_version')}")
        minutes = f", {report['wall_time_s'] / 60:.0f} min" if report.get("wall_time_s") else ""
        print(f"{name}  ({state}{minutes})\n    python pipelines/reproduce.py "
              f"{shlex.join(recipe(name, report['command']))}")
    print(f"\nThe benchmark studies beside them give their commands in their pages: "
          f"{', '.join(sorted(p.name for p in RESULTS.glob('*.md')))} in {os.path.relpath(RESULTS)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        return list_reports()
    if args.only:
        reports = published()
        if args.only not in reports:
            raise ConfigError(f"--only: no published report {args.only!r}; choose from {', '.join(reports)}")
        again = recipe(args.only, reports[args.only]["command"])
        for option in ("--tracking-uri", "--storage-path"):
            value = getattr(args, option[2:].replace("-", "_"))
            if value and (option != "--storage-path" or value != str(search.DEFAULT_STORAGE)):
                again += [option, value]
        print(f"regenerating {args.only}: python pipelines/reproduce.py {shlex.join(again)}", flush=True)
        return main(again)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        search.parse_method(m)  # loss or loss:pairing, e.g. itra_c:memory
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1 but got {args.seeds}")
    experiment, title, rows = plan(args)
    proto = protocol(args)
    for row in rows:  # before anything is written: two methods that would run one search are refused
        search.check_methods(spaces.load(row), methods)
    uri = tracking.resolve_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    stem = f"{experiment.removeprefix('reproduce-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    out = Path(args.out or Path("runs") / "reproduce" / stem)
    command = "python pipelines/reproduce.py " + shlex.join(portable(list(argv if argv is not None else sys.argv[1:])))
    tracker = tracking.Tracker(uri, experiment, run_name=stem,
                               params={"protocol": proto["name"], "seeds": args.seeds, "methods": ",".join(methods),
                                       "rows": ",".join(Path(r).stem for r in rows), "command": command})
    ran = settings(rows, proto)
    lines = [f"# {title}: reproduction", "",
             f"Code `{ran['code_version']}`, loss form `{ran['loss_form']}`, selection rule "
             f"`{ran['selection_rule']}`.", "",
             f"Protocol: **{proto['name']}**: epochs {proto['epochs']}, training subset {proto['subset']}, "
             f"{proto['trials_per_method']} trials per method, {args.seeds} retraining seeds. "
             f"Selection: {proto['selection']}.", "",
             "Overrides of every row's configuration: "
             + (", ".join(f"`{o}`" for o in proto["overrides"]) or "none") + ".", "",
             f"Command: `{command}`", "",
             f"MLflow: experiment `{experiment}`, parent run `{tracker.parent}`.", ""]
    figs: dict[str, Any] = {}
    report: dict[str, Any] = {"title": title, "protocol": proto, "command": command, **ran, "rows": {}}
    for row, paper in rows.items():
        print(f"== {Path(row).stem}: searching {', '.join(methods)}", flush=True)
        searched = search_row(row, methods, proto, args, stem, uri)
        print(f"== {Path(row).stem}: retraining each winner on the full training set, {args.seeds} seeds", flush=True)
        runs = Path(args.storage_path) / f"{stem}-{Path(row).stem}-retrain"  # checkpoints stay out of the report
        results = {m: retrain(searched[m], args.seeds, runs, tracker, row, m) for m in methods}
        lines += report_table(row, results, paper, args.seeds)
        figs.update(figures(row, results, paper))
        report["rows"][Path(row).stem] = {
            m: {k: v for k, v in r.items() if k != "histories"} | {"paper": (paper or {}).get(m)}
            for m, r in results.items()}
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - t0
    report["wall_time_s"] = round(wall, 1)
    lines += [f"Wall time, searches and retrains: {wall / 60:.1f} min on this machine.", "",
              "Plots: " + ", ".join(f"`{name}`" for name in figs), ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
    tracker.finish(None, [out / "report.md", out / "report.json"], figs)
    plots.close(figs.values())
    print("\n".join(lines))
    print(f"report: {out / 'report.md'}; MLflow parent run {tracker.parent} in {experiment!r} at {uri}")
    return 0


def settings(rows: dict[str, Any], proto: dict[str, Any]) -> dict[str, str]:
    """What a report must say it ran with, so that a changed default dates it (``tests/test_results.py``): the
    code's version, and the loss form and selection rule of its rows' configurations."""
    cfgs = [spaces.load(row).base_config(proto["overrides"]) for row in rows]
    return {"code_version": config_mod.code_version(),
            "loss_form": ",".join(sorted({c.loss.form for c in cfgs})),
            "selection_rule": ",".join(sorted({c.select.rule for c in cfgs}))}


if __name__ == "__main__":
    sys.exit(cli.run("python pipelines/reproduce.py", main))
