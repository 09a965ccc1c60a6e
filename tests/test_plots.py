"""Pictures of a search: each is a figure with what it says on it; importing leaves matplotlib's choices alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from itra_tune import plots, spaces

ROWS = [{"trial": f"trial_{i}", "loss.lam": lam, "loss.bandwidth": bw, "val_acc": acc, "status": "completed"}
        for i, (lam, bw, acc) in enumerate([(0.1, "median", 0.8), (0.5, "mean", 0.9), (1.0, "median", 0.85)])]
HISTORY = [{"epoch": e, "val_acc": 0.5 + 0.1 * e, "val_ce": 1.0 / e, "compactness": 0.6 - 0.05 * e} for e in (1, 2, 3)]


def test_figures_plot_what_they_are_given():
    figs = {
        "params": plots.params_vs_metric(ROWS, ["loss.lam", "loss.bandwidth"], "val_acc"),
        "curves": plots.learning_curves({"trial_0": HISTORY}),
        "compact": plots.compactness_curves({"trial_0": HISTORY}),
        "tsne": plots.tsne(np.random.default_rng(0).normal(size=(60, 4)), np.arange(60) % 3, "t-SNE"),
    }
    try:
        params = figs["params"].axes
        assert [ax.get_xlabel() for ax in params] == ["loss.lam", "loss.bandwidth"]
        assert sum(len(c.get_offsets()) for c in params[0].collections) == len(ROWS)
        line = figs["compact"].axes[0].lines[0]
        assert list(line.get_ydata()) == [h["compactness"] for h in HISTORY]
    finally:
        plots.close(figs.values())


def test_optuna_pictures_from_a_search_s_rows():
    params = [spaces.Param("loss.lam", "float", 0.05, 1.5), spaces.Param("loss.bandwidth", "categorical",
                                                                         choices=("median", "mean"))]
    figs = plots.optuna_figures(ROWS, params, "val_acc", "max")
    try:
        assert set(figs) == {"plots/parallel_coordinates.png", "plots/param_importances.png"}
    finally:
        plots.close(figs.values())


def test_importing_plots_keeps_the_backend_the_user_chose():
    code = "import matplotlib; matplotlib.use('pdf'); import itra_tune.plots; print(matplotlib.get_backend())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "pdf"
