"""Pictures of a search, as matplotlib figures (the tracking module logs them on the parent run).

Figures are only saved to files, never shown; matplotlib picks its file backend by itself where there is no
display, and this module leaves the choice to whoever imports it.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from itra_tune.config import UNRANKED

Rows = list[dict[str, Any]]


def close(figures: Any) -> None:
    """Free figures once logged: pyplot keeps every figure alive until it is closed."""
    for fig in figures:
        plt.close(fig)


def params_vs_metric(rows: Rows, params: list[str], metric: str, log_axes: frozenset[str] = frozenset()) -> Any:
    """Each searched parameter against the trial's best metric, coloured by bandwidth scheme (Fig. 2 style)."""
    ok = [r for r in rows if metric in r and not str(r.get("status", "")).startswith(UNRANKED)]
    fig, axes = plt.subplots(1, max(1, len(params)), figsize=(4 * max(1, len(params)), 3.4), squeeze=False)
    schemes = sorted({str(r.get("loss.bandwidth", r.get("bandwidth", "-"))) for r in ok})
    colours = {s: plt.cm.tab10(i) for i, s in enumerate(schemes)}
    for ax, p in zip(axes[0], params):
        for s in schemes:
            pts = [(r[p], r[metric]) for r in ok if p in r and str(r.get("loss.bandwidth", "-")) == s]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter([str(x) if isinstance(x, str) else x for x in xs], ys, color=colours[s], label=s)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        if p in log_axes:
            ax.set_xscale("log")
    if len(schemes) > 1:
        axes[0][0].legend(title="bandwidth", fontsize=8)
    fig.suptitle(f"searched parameters against {metric} (best epoch of each trial)")
    fig.tight_layout()
    return fig


def methods_vs_paper(title: str, ours: dict[str, tuple[tuple[float, float], tuple[float, float]]],
                     paper: dict[str, tuple[float, float]]) -> Any:
    """Test accuracy and CE per method as bars (mean ± std over seeds), the paper's figures as diamonds.

    Args:
        ours: method -> ((accuracy %, std), (CE, std)).
        paper: method -> (accuracy %, CE), for the methods the paper reports.
    """
    methods = list(ours)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for k, (ax, label) in enumerate(zip(axes, ("test accuracy (%)", "test cross-entropy"))):
        means, sds = zip(*(ours[m][k] for m in methods))
        ax.bar(methods, means, yerr=sds, capsize=4, color="#4c72b0", label="ours (mean ± std over seeds)")
        marks = [(i, paper[m][k]) for i, m in enumerate(methods) if m in paper]
        if marks:
            ax.scatter(*zip(*marks), marker="D", color="#dd8452", zorder=3, label="paper")
        if k == 0:  # accuracies differ by tenths: zoom in
            values = list(means) + [v for _, v in marks]
            ax.set_ylim(max(0.0, min(values) - 3.0), min(100.0, max(values) + 2.0))
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def seed_curves(title: str, histories: dict[str, list[Rows]], metric: str) -> Any:
    """``metric`` over epochs for every seed of every method, one colour per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (method, runs) in enumerate(histories.items()):
        for j, rows in enumerate(runs):
            ax.plot([r["epoch"] for r in rows], [r[metric] for r in rows], color=f"C{i}", alpha=0.8,
                    label=method if j == 0 else None)
    ax.set(xlabel="epoch", ylabel=metric, title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def learning_curves(histories: dict[str, Rows]) -> Any:
    """Validation accuracy and CE per epoch for the given trials (the top of the search)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        a.plot(epochs, [r["val_acc"] for r in rows], marker="o", label=name)
        b.plot(epochs, [r["val_ce"] for r in rows], marker="o", label=name)
    a.set(xlabel="epoch", ylabel="val_acc", title="validation accuracy")
    b.set(xlabel="epoch", ylabel="val_ce", title="validation cross-entropy")
    a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def compactness_curves(histories: dict[str, Rows]) -> Any:
    """Feature compactness per epoch (the paper's Figure 1, left): lower is more compact."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, rows in histories.items():
        ax.plot([r["epoch"] for r in rows], [r["compactness"] for r in rows], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="same-class / all-pairs distance", title="feature compactness (test)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _study(rows: Rows, params: list[Any], metric: str, mode: str) -> Any:
    """An Optuna study rebuilt from the search's trials, for Optuna's own pictures."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    dists = {p.key: p.distribution() for p in params}
    for r in rows:
        if metric in r and not str(r.get("status", "")).startswith(UNRANKED) and all(k in r for k in dists):
            study.add_trial(optuna.trial.create_trial(params={k: r[k] for k in dists}, distributions=dists,
                                                      value=float(r[metric])))
    return study


def optuna_figures(rows: Rows, params: list[Any], metric: str, mode: str) -> dict[str, Any]:
    """Parallel coordinates and parameter importance (Optuna's visualization), when there is enough to show."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    study = _study(rows, params, metric, mode)
    if len(study.trials) < 2:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        figs = {"plots/parallel_coordinates.png": ovm.plot_parallel_coordinate(study, target_name=metric).figure}
        if len(params) > 1:
            figs["plots/param_importances.png"] = ovm.plot_param_importances(study, target_name=metric).figure
    for fig in figs.values():
        fig.set_size_inches(10, 4.5)
        fig.tight_layout()
    return figs


def warm() -> None:
    """Import what the pictures of a search use (scikit-learn, Optuna's plots and importances: seconds), ahead
    of time, for a caller that has a moment to spare before the search's record."""
    import optuna.importance  # noqa: F401 - fANOVA, and scikit-learn's forests with it
    import optuna.visualization.matplotlib  # noqa: F401
    import sklearn.manifold  # noqa: F401


def tsne_map(features: Any) -> Any:
    """The 2-d t-SNE embedding of features (N, D) -> (N, 2), on one thread: on a busy machine every core's thread
    waits for the slowest (40 s against 1 s measured). Pure computation: it may run beside the figures."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return TSNE(n_components=2, init="pca", perplexity=30, random_state=0).fit_transform(features)


def tsne(features: Any, labels: Any, title: str, xy: Any = None) -> Any:
    """A t-SNE map of features coloured by class (the paper's Figure 3); ``xy``: ``tsne_map(features)``, when
    computed already."""
    xy = tsne_map(features) if xy is None else xy
    fig, ax = plt.subplots(figsize=(6, 5.5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6)
    ax.legend(*points.legend_elements(), title="class", fontsize=7, loc="best", markerscale=0.8)
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    return fig
