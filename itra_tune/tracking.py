"""MLflow conventions, in one place: the only module that knows MLflow.

One experiment per space; one parent run per search; one child run per trial, tagged ``mlflow.parentRunId``
(nested under its parent in the UI) and ``itra_tune.trial_id`` (so a resumed search finds it again instead of
making a second). Per-epoch metrics use ``step = epoch``. Every write goes through ``Tracker._safe``: a
tracking outage never stops training, and ``finish`` back-fills from the search's own results whatever did
not arrive.
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from itra_tune.config import ConfigError

TRIAL_TAG = "itra_tune.trial_id"
PARENT_TAG = "mlflow.parentRunId"
BEST_TAG = "itra_tune.best_run_id"
STATUS_TAG = "itra_tune.status"
EPOCH_METRICS = ("train_ce", "val_acc", "val_ce", "test_acc", "test_ce", "match_loss", "compactness")


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default: ``mlflow.db`` in the working folder."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise ConfigError, in one line, when a tracking server does not answer its /health endpoint."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status == 200:
                return
            problem = f"HTTP {r.status}"
    except (urllib.error.URLError, OSError) as e:
        problem = str(getattr(e, "reason", e))
    raise ConfigError(f"--tracking-uri {uri}: the MLflow server does not answer ({problem}); start it with "
                      f"`mlflow server --host 127.0.0.1`, or omit --tracking-uri for ./mlflow.db")


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(c: Any, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else c.create_experiment(name)


def flat(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts as dotted keys: {"loss": {"lam": 1}} -> {"loss.lam": 1}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


class Tracker:
    """The MLflow side of one search: its parent run and one child run per trial.

    Args:
        uri: the tracking URI (``resolve_uri``).
        experiment: the MLflow experiment, one per space.
        parent_run_id: an existing parent run to continue (a resumed search), or None for a new one.
        run_name, params, artifacts: the new parent run's name, parameters and files to attach.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None, run_name: str = "",
                 params: dict[str, Any] | None = None, artifacts: Iterable[Path] = ()) -> None:
        self.uri, self.c = uri, client(uri)
        self.exp_id = experiment_id(self.c, experiment)
        self.failures = 0
        self._children: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, set[int]] = {}  # trial id -> epochs that reached MLflow
        if parent_run_id is None:
            run = self.c.create_run(self.exp_id, run_name=run_name, tags={"itra_tune.role": "search"})
            self.parent = run.info.run_id
            self._log_params(self.parent, params or {})
            for a in artifacts:
                self.c.log_artifact(self.parent, str(a))
        else:
            self.parent = parent_run_id
            self.c.update_run(self.parent, status="RUNNING")
            for run in self.c.search_runs([self.exp_id], f"tags.`{PARENT_TAG}` = '{self.parent}'"):
                tid = run.data.tags.get(TRIAL_TAG)
                self._children[tid] = run.info.run_id
                history = self.c.get_metric_history(run.info.run_id, "test_acc")  # every epoch has it
                self._logged[tid] = {int(m.step) for m in history}

    # --- live, during the search: never raise --------------------------------------------------------

    def _safe(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - an outage must not stop training; finish() back-fills
            self.failures += 1
            return None

    def trial_started(self, trial_id: str, name: str, params: dict[str, Any]) -> None:
        if trial_id in self._children:
            self._safe(lambda: self.c.update_run(self._children[trial_id], status="RUNNING"))
            return
        run = self._safe(lambda: self.c.create_run(
            self.exp_id, run_name=name, tags={PARENT_TAG: self.parent, TRIAL_TAG: trial_id}))
        if run is not None:
            self._children[trial_id] = run.info.run_id
            self._logged[trial_id] = set()
            self._safe(lambda: self._log_params(run.info.run_id, params))

    def epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        if trial_id not in self._children or step in self._logged[trial_id]:
            return  # a resumed trial re-runs the epochs after its checkpoint: identically, so log them once
        if self._safe(lambda: self._log_epoch(trial_id, metrics)) is not None:
            self._logged[trial_id].add(step)

    # --- at the end of the search: back-fill, statuses, models, pictures --------------------------------

    def finish_trial(self, trial_id: str, name: str, params: dict[str, Any], history: list[dict[str, Any]],
                     status: str, model_dir: Path | None) -> str:
        """Make the trial's run complete: missing epochs, its final status, its best model. Returns its run id."""
        if trial_id not in self._children:  # its start never reached MLflow
            self.trial_started(trial_id, name, params)
            if trial_id not in self._children:
                raise ConnectionError(f"cannot create the MLflow run of {name}")
        for row in history:
            if int(row["epoch"]) not in self._logged[trial_id]:
                self._log_epoch(trial_id, row)
                self._logged[trial_id].add(int(row["epoch"]))
        run_id = self._children[trial_id]
        self.c.set_tag(run_id, STATUS_TAG, status)
        if model_dir is not None:
            self.c.log_artifacts(run_id, str(model_dir), "model")
        self.c.set_terminated(run_id, "FAILED" if status.startswith("failed") else "FINISHED")
        return run_id

    def drop_orphans(self, trial_ids: set[str]) -> int:
        """Soft-delete child runs of trials the search no longer has (lost with a killed driver's last
        moments: Tune starts them afresh under new ids). They stay recoverable in MLflow's trash."""
        orphans = [tid for tid in self._children if tid not in trial_ids]
        for tid in orphans:
            self.c.set_tag(self._children[tid], STATUS_TAG, "orphaned: its trial was lost when the driver was killed")
            self.c.set_terminated(self._children[tid], "KILLED")
            self.c.delete_run(self._children.pop(tid))
        return len(orphans)

    def finish(self, best_run_id: str | None, files: Iterable[Path], figures: dict[str, Any],
               interrupted: bool = False) -> None:
        for f in files:
            self.c.log_artifact(self.parent, str(f))
        for artifact, fig in figures.items():
            self.c.log_figure(self.parent, fig, artifact)
        if best_run_id is not None:
            self.c.set_tag(self.parent, BEST_TAG, best_run_id)
        self.c.set_terminated(self.parent, "KILLED" if interrupted else "FINISHED")

    def set_parent_tag(self, key: str, value: str) -> None:
        self.c.set_tag(self.parent, key, value)

    def log_artifact(self, path: Path) -> None:
        """Attach a file to the search's parent run."""
        self.c.log_artifact(self.parent, str(path))

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        log_params(self.c, run_id, params)

    def _log_epoch(self, trial_id: str, metrics: dict[str, Any]) -> bool:
        from mlflow.entities import Metric

        step, ts = int(metrics["epoch"]), int(time.time() * 1000)
        batch = [Metric(k, float(metrics[k]), ts, step) for k in EPOCH_METRICS if k in metrics]
        self.c.log_batch(self._children[trial_id], metrics=batch)
        return True


def save_model(model: Any, example: Any, path: Path) -> Path:
    """Save a torch model as an MLflow model (pickle format: loads back as the same class) with a signature."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model.eval()
    with torch.no_grad():
        out = model(example)
    signature = infer_signature(example.cpu().numpy(), out.cpu().numpy())
    mlflow.pytorch.save_model(model.cpu(), str(path), signature=signature, serialization_format="pickle",
                              pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "itra_tune"])
    return path


def log_params(c: Any, run_id: str, params: dict[str, Any]) -> None:
    """Nested parameters as dotted keys, in batches of MLflow's limit of 100."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in flat("", params).items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def log_production(uri: str, experiment: str, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                   model_dir: Path, export_dir: Path, register_as: str | None) -> tuple[str, str | None]:
    """One finished run holding a retrained model (``model``) and its export (``export``); optionally
    registered. Returns the run id and ``name/version`` (or None)."""
    from mlflow.entities import Metric

    c = client(uri)
    run = c.create_run(experiment_id(c, experiment), run_name=run_name, tags={STATUS_TAG: "production"})
    run_id = run.info.run_id
    log_params(c, run_id, params)
    ts = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
    c.log_artifacts(run_id, str(model_dir), "model")
    c.log_artifacts(run_id, str(export_dir), "export")
    c.set_terminated(run_id, "FINISHED")
    return run_id, register(uri, run_id, register_as) if register_as else None


def register(uri: str, run_id: str, name: str) -> str:
    """Register a run's model in the MLflow Model Registry under ``name`` (made if new); returns ``name/version``."""
    import mlflow

    mlflow.set_tracking_uri(uri)  # register_model talks to the global tracking and registry URI
    version = mlflow.register_model(f"runs:/{run_id}/model", name)
    return f"{name}/{version.version}"


# --- reading back: the best of a space ---------------------------------------------------------------


def latest_search(space: str, uri: str | None = None) -> tuple[Any, Any]:
    """The client and the newest finished parent run of ``space`` that names a best trial."""
    uri = resolve_uri(uri)
    check_reachable(uri)
    c = client(uri)
    exp = c.get_experiment_by_name(space)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {space!r} at {uri}; run `python -m itra_tune.search --space "
                          f"{space}` first, or pass the tracking URI it used")
    runs = c.search_runs([exp.experiment_id], f"tags.`{BEST_TAG}` != ''", order_by=["attributes.start_time DESC"],
                         max_results=1)
    if not runs:
        raise ConfigError(f"experiment {space!r} at {uri} has no finished search with a best trial yet")
    return c, runs[0]


def download(c: Any, run_id: str, artifact: str) -> Path:
    return Path(c.download_artifacts(run_id, artifact, tempfile.mkdtemp(prefix="itra_tune_")))


def load_model(c: Any, run_id: str) -> Any:
    """A run's ``model`` artifact as the torch module it was saved from, on the CPU."""
    import mlflow.pytorch

    return mlflow.pytorch.load_model(str(download(c, run_id, "model")), map_location="cpu")


def log_figure(uri: str, run_id: str, fig: Any, artifact: str) -> None:
    client(uri).log_figure(run_id, fig, artifact)
