"""MLflow conventions, in one place: the only module that knows MLflow.

One experiment per space (tagged for MLflow's model-training view); one parent run per search; one child run
per trial, tagged ``mlflow.parentRunId`` (nested under its parent in the UI) and ``itra_tune.trial_id`` (so a
resumed search finds it again instead of making a second). Per-epoch metrics use ``step = epoch``; a trial's
headline metrics (``best_val_acc``, ``best_test_acc``, ...) are those of its selected epoch, and so are the
parent's (of the best trial). The best trials' checkpoints are MLflow LoggedModels (``models:/<model_id>``),
linked to their run and epoch: a pyfunc loaded from ``itra_tune/serving.py`` that rebuilds the network and
loads its weights with ``weights_only`` (no pickled object is loaded).

Every live write goes through ``Tracker._safe``: a tracking outage never stops training nor slows it (a write
to a server that does not answer its /health within a second is skipped, not left to MLflow's own retries, which
take minutes per call), and the end of the search back-fills from the search's own results whatever did not
arrive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itra_tune import config as config_mod
from itra_tune.config import ConfigError

TRIAL_TAG = "itra_tune.trial_id"
PARENT_TAG = "mlflow.parentRunId"
BEST_TAG = "itra_tune.best_run_id"
BEST_MODEL_TAG = "itra_tune.best_model_id"
STATUS_TAG = "itra_tune.status"
UNMATCHED_TAG = "itra_tune.unmatched"  # on a trial whose lambda was applied as 0 in every epoch: why
PLACEMENT_TAG = "itra_tune.{}"  # a trial's node, gpu_ids and device (search.trainable.PLACEMENT)
RANK = "rank"  # a trial's place in the search's order, 1 the answer (the shared view sorts by it)
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key: a view of the runs table the MLflow UI opens from a link
SMOKE_TAG = "itra_tune.smoke"  # on a search's parent run: "true" for a --smoke search, which best_config skips
ANSWER_ARTIFACT = "answer.json"  # on a search's parent run: the answer, mean ± spread over seeds (search.confirming)
CONFIRMS_TAG = "itra_tune.confirms"  # on a confirmation's trial run: the exploring trial it re-trains on a new seed
EPOCH_TAG = "itra_tune.epoch"  # on a LoggedModel: the epoch of the checkpoint it holds
# lam: the configured lambda (PBT moves it); lam_applied: the gate's, the mean
EPOCH_METRICS = ("train_ce", "val_acc", "val_ce", "val_ce_se", "test_acc", "test_ce", "match_loss", "compactness",
                 "lr", "lam", "lam_applied")
HEADLINE_METRICS = ("val_acc", "val_ce", "test_acc", "test_ce")  # logged as best_<name>: the selected epoch's
# MLflow 3 opens an experiment in its GenAI view unless it says it holds model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SERVING_CODE = Path(__file__).resolve().parent / "serving.py"


def ui_link(uri: str, experiment_id: str, view: str | None = None, run_id: str | None = None) -> str:
    """Where the MLflow UI shows an experiment's runs (``view``: a shared view of them, ``share_view``), or one
    run's page: the server of an http URI, else the address ``mlflow ui`` serves by default. MLflow 3.17's UI
    opens experiments and runs in its GenAI view unless the link asks for the model-training one (it reads
    ``workflowType`` from the link, else the switch the browser last used, not the experiment's kind tag)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"runs/{run_id}" if run_id else "runs"
    shared = f"viewStateShareKey={view}&" if view and not run_id else ""
    return f"{base}/#/experiments/{experiment_id}/{page}?{shared}workflowType=machine_learning"


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default: ``mlflow.db`` in the working folder."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def problem(uri: str, timeout: float = 5.0) -> str | None:
    """What keeps the tracking server at ``uri`` from answering its /health endpoint; None when it answers (or
    when ``uri`` is no server)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise ConfigError, in one line, when a tracking server does not answer its /health endpoint."""
    away = problem(uri, timeout)
    if away is not None:
        raise ConfigError(f"--tracking-uri {uri}: the MLflow server does not answer ({away}); start it with "
                          f"`mlflow server --host 127.0.0.1`, or omit --tracking-uri for ./mlflow.db")


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock while a local SQLite store may be created: two searches starting together in a
    fresh folder would both run MLflow's schema migration on the same new file, and one would fail."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    key = hashlib.sha256(str(Path(uri.removeprefix("sqlite:///")).resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"itra_tune-store-{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def client(uri: str) -> Any:
    """An MlflowClient of ``uri``, its store created (under a lock, for a local SQLite file) and ready."""
    from mlflow import MlflowClient

    with _store_lock(uri):
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)  # the first use of a SQLite store creates and migrates it
    return c


def warm(uri: str) -> None:
    """Import MLflow and create the store of ``uri`` (seconds for a new SQLite file), and the map of installed
    packages MLflow builds when it first logs a model: ahead of time, for a caller with a moment to spare."""
    client(uri)
    import mlflow.pyfunc  # noqa: F401
    from mlflow.utils import requirements_utils

    requirements_utils._init_modules_to_packages_map()  # a second and more, once per process


def experiment_id(c: Any, name: str) -> str:
    """The experiment ``name``, made if new, tagged so the UI opens it on runs and models."""
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, tags=EXPERIMENT_KIND)
    if exp.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
        for k, v in EXPERIMENT_KIND.items():
            c.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def headline(row: dict[str, Any], names: Iterable[str] = HEADLINE_METRICS) -> dict[str, float]:
    """A trial's headline metrics, from its selected epoch's row: ``best_val_acc``, ..., ``best_epoch``."""
    out = {f"best_{k}": float(row[k]) for k in names if k in row}
    if "epoch" in row or "best_epoch" in row:
        out["best_epoch"] = float(row.get("best_epoch", row.get("epoch")))
    return out


# MLflow's progress bars and "View run ... at" lines, which a search would print once per logged model
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
         "MLFLOW_PRINT_MODEL_URLS_ON_CREATION": "false"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    old = {k: os.environ.get(k) for k in QUIET}
    os.environ.update(QUIET)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _terminate(c: Any, run_id: str, status: str) -> None:
    with _quiet():  # MLflow prints the run's address at every termination
        c.set_terminated(run_id, status)


LIVE_PROBE_S = 1.0  # how long a live write waits for the server's /health before leaving itself to the back-fill
# A live write that fails (the server went away in the middle of it) is tried once more, not MLflow's 7 times with
# backoff (minutes, while every trial waits); MLflow reads these at each request.
LIVE_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def _live_retries() -> Iterator[None]:
    """MLflow's request retries cut to ``LIVE_RETRIES`` for the block: a search's driver makes its live writes
    from Tune's loop, one at a time, and the record at its end keeps MLflow's own patient retries."""
    before = {k: os.environ.get(k) for k in LIVE_RETRIES}
    os.environ.update({k: v for k, v in LIVE_RETRIES.items() if before[k] is None})  # a user's own settings win
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)


class Tracker:
    """The MLflow side of one search: its parent run and one child run per trial.

    Args:
        uri: the tracking URI (``resolve_uri``).
        experiment: the MLflow experiment, one per space.
        parent_run_id: an existing parent run to continue (a resumed search), or None for a new one.
        run_name, params, artifacts: the new parent run's name, parameters and files to attach.
        epoch_metrics: what an epoch logs; None: every number given (a user trainable's own metrics).
        headline_metrics: what headlines a trial and the search, as ``best_<name>`` of the selected epoch.
        tags: more tags of a new parent run (``SMOKE_TAG``).
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None, run_name: str = "",
                 params: dict[str, Any] | None = None, artifacts: Iterable[Path] = (),
                 epoch_metrics: tuple[str, ...] | None = EPOCH_METRICS,
                 headline_metrics: tuple[str, ...] = HEADLINE_METRICS, tags: dict[str, str] | None = None) -> None:
        self.uri, self.c = uri, client(uri)
        self.epoch_metrics, self.headline_metrics = epoch_metrics, headline_metrics
        self.exp_id = experiment_id(self.c, experiment)
        self.failures = 0
        self.model_ids: dict[str, str] = {}  # run id -> the LoggedModel of its best checkpoint
        self._children: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, set[int]] = {}  # trial id -> epochs that reached MLflow
        if parent_run_id is None:
            run = self.c.create_run(self.exp_id, run_name=run_name, tags={"itra_tune.role": "search", **(tags or {})})
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
                self._logged[tid] = self._epochs_logged(run)

    # --- live, during the search: never raise --------------------------------------------------------

    def _safe(self, fn: Callable[[], Any]) -> Any:
        if problem(self.uri, LIVE_PROBE_S) is not None:  # away: the back-fill writes it, training goes on
            self.failures += 1
            return None
        try:
            with _live_retries():
                return fn()
        except Exception:  # noqa: BLE001 - an outage must not stop training; finish() back-fills
            self.failures += 1
            return None

    def knows(self, trial_id: str) -> bool:
        """Whether the trial has its run already."""
        return trial_id in self._children

    def trial_started(self, trial_id: str, name: str, params: dict[str, Any],
                      tags: dict[str, str] | None = None) -> None:
        if trial_id in self._children:
            self._safe(lambda: self.c.update_run(self._children[trial_id], status="RUNNING"))
            return
        run = self._safe(lambda: self.c.create_run(
            self.exp_id, run_name=name, tags={PARENT_TAG: self.parent, TRIAL_TAG: trial_id, **(tags or {})}))
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
                     status: str, selected: dict[str, Any] | None = None, model: ModelFiles | None = None,
                     tags: dict[str, str] | None = None) -> str:
        """Make the trial's run complete: missing epochs, its headline metrics (those of its ``selected`` epoch's
        row), its final status and, when given, its best checkpoint as a LoggedModel and its ``tags`` (those of
        ``trial_started``). Returns its run id."""
        if trial_id not in self._children:  # its start never reached MLflow
            self.trial_started(trial_id, name, params, tags)
            if trial_id not in self._children:
                raise ConnectionError(f"cannot create the MLflow run of {name}")
        for row in history:
            if int(row["epoch"]) not in self._logged[trial_id]:
                self._log_epoch(trial_id, row)
                self._logged[trial_id].add(int(row["epoch"]))
        run_id = self._children[trial_id]
        if selected:
            log_metrics(self.c, run_id, self._headline(selected))
        self.c.set_tag(run_id, STATUS_TAG, status)
        if model is not None:  # once: a resumed search finishes its trials again, their models stay as logged
            self.model_ids[run_id] = self._logged_model(run_id, model.step) or log_model(self.uri, run_id, model, name)
        _terminate(self.c, run_id, "FAILED" if status.startswith(config_mod.UNRANKED) else "FINISHED")
        return run_id

    def _logged_model(self, run_id: str, step: int) -> str | None:
        """The id of the LoggedModel run ``run_id`` already has for epoch ``step``, if any."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        found = mlflow.search_logged_models(experiment_ids=[self.exp_id], output_format="list",
                                            filter_string=f"source_run_id = '{run_id}'")
        return next((m.model_id for m in found if m.tags.get(EPOCH_TAG) == str(step)), None)

    def drop_orphans(self, trial_ids: set[str]) -> int:
        """Soft-delete child runs of trials the search no longer has (lost with a killed driver's last
        moments: Tune starts them afresh under new ids). They stay recoverable in MLflow's trash."""
        orphans = [tid for tid in self._children if tid not in trial_ids]
        for tid in orphans:
            self.c.set_tag(self._children[tid], STATUS_TAG, "orphaned: its trial was lost when the driver was killed")
            _terminate(self.c, self._children[tid], "KILLED")
            self.c.delete_run(self._children.pop(tid))
        return len(orphans)

    def finish(self, best_run_id: str | None, files: Iterable[Path], figures: dict[str, Any],
               interrupted: bool = False, best: dict[str, Any] | None = None) -> None:
        """Complete the parent run: files, pictures, the best trial (tag, headline metrics, model id)."""
        for f in files:
            self.c.log_artifact(self.parent, str(f))
        for artifact, fig in figures.items():
            self.c.log_figure(self.parent, fig, artifact)
        if best_run_id is not None:
            self.c.set_tag(self.parent, BEST_TAG, best_run_id)
            if best_run_id in self.model_ids:
                self.c.set_tag(self.parent, BEST_MODEL_TAG, self.model_ids[best_run_id])
        if best:
            log_metrics(self.c, self.parent, self._headline(best))
        _terminate(self.c, self.parent, "KILLED" if interrupted else "FINISHED")

    def share_view(self, metric: str, params: Iterable[str]) -> str:
        """A shared view of the search for the UI's runs table: its trials alone (not folded under the parent),
        in the search's order (``RANK``: the answer first, as ``itra_tune.selection`` ranks them), with the rank,
        the headline metrics, each trial's status (completed, stopped early, failed, ...), the searched parameters
        and the models as columns. MLflow keeps it as an experiment
        tag ``mlflow.sharedViewState.<key>``, which a link opens with ``viewStateShareKey=<key>`` (``ui_link``).
        Returns the key."""
        headline = [RANK, f"best_{metric}"] + [f"best_{m}" for m in self.headline_metrics if m != metric] \
            + ["best_epoch"]
        state = {"searchFilter": f"tags.`{PARENT_TAG}` = '{self.parent}'", "orderByKey": f"metrics.`{RANK}`",
                 "orderByAsc": True,
                 "selectedColumns": [f"metrics.`{m}`" for m in headline] + [f"tags.`{STATUS_TAG}`"]
                 + [f"params.`{p}`" for p in params] + ["attributes.`Models`"]}
        text = json.dumps(state, separators=(",", ":"))
        key = hashlib.sha256(text.encode()).hexdigest()
        self.c.set_experiment_tag(self.exp_id, f"{SHARED_VIEW_TAG}{key}", text)
        return key

    def set_parent_tag(self, key: str, value: str) -> None:
        self.c.set_tag(self.parent, key, value)

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        self.c.set_tag(run_id, key, value)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Several tags of a run in one request."""
        from mlflow.entities import RunTag

        if tags:
            self.c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, path: Path) -> None:
        """Attach a file to the search's parent run."""
        self.c.log_artifact(self.parent, str(path))

    def log_folder(self, run_id: str, folder: Path, artifact_path: str) -> None:
        """Attach a folder's files to a run, under ``artifact_path``."""
        with _quiet():
            self.c.log_artifacts(run_id, str(folder), artifact_path)

    def _epochs_logged(self, run: Any) -> set[int]:
        """The epochs a run holds: those of a metric every epoch logs (test_acc; a user's, their first)."""
        names = ["test_acc"] if self.epoch_metrics else [k for k in sorted(run.data.metrics)
                                                         if not k.startswith("best_")][:1]
        return {int(m.step) for k in names for m in self.c.get_metric_history(run.info.run_id, k)}

    def _headline(self, row: dict[str, Any]) -> dict[str, float]:
        return headline(row, self.headline_metrics)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        log_params(self.c, run_id, params)

    def _log_epoch(self, trial_id: str, metrics: dict[str, Any]) -> bool:
        from mlflow.entities import Metric

        step, ts = int(metrics["epoch"]), int(time.time() * 1000)
        names = self.epoch_metrics or [k for k, v in metrics.items() if k != "epoch" and _is_number(v)]
        batch = [Metric(k, float(metrics[k]), ts, step) for k in names if k in metrics]
        self.c.log_batch(self._children[trial_id], metrics=batch)
        return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class ModelFiles:
    """A handed-over model to log: its export folder (``itra_tune.export``), example inputs and the outputs the
    model gives them (for the signature), and the epoch its weights come from."""

    export_dir: Path
    inputs: Any  # numpy array: float32 pixels in [0, 1], (B, C, H, W), or int64 token ids (B, L)
    outputs: dict[str, Any]  # numpy arrays: logits, probabilities, class
    step: int


def log_model(uri: str, run_id: str, model: ModelFiles, name: str = "model") -> str:
    """Log ``model`` as a LoggedModel of run ``run_id`` at step ``model.step``; returns its model id.

    The MLflow model is a pyfunc from code (``itra_tune/serving.py``) carrying the export folder: loading it
    rebuilds the network from its configuration and reads the weights with ``weights_only``.
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(uri)  # log_model writes to the active run of the global tracking URI
    signature = infer_signature(model.inputs, model.outputs)
    with _quiet(), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(SERVING_CODE), artifacts={"export": str(model.export_dir)},
            signature=signature, input_example=model.inputs[:2], step=model.step, tags={EPOCH_TAG: str(model.step)},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "itra_tune"])
    return info.model_id


def log_params(c: Any, run_id: str, params: dict[str, Any]) -> None:
    """Nested parameters as dotted keys, in batches of MLflow's limit of 100."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in config_mod.dotted(params).items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def log_param_once(c: Any, run_id: str, key: str, value: Any) -> None:
    """``key`` logged on the run unless it has it already (a resumed search's trial, or a run started by an
    earlier version with another value): MLflow refuses to change a parameter."""
    if key not in c.get_run(run_id).data.params:
        log_params(c, run_id, {key: value})


def log_metrics(c: Any, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])


def log_production(uri: str, experiment: str, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                   model: ModelFiles, register_as: str | None) -> tuple[str, str, str | None]:
    """One finished run holding a retrained model as a LoggedModel; optionally registered.

    Returns the run id, the model id and ``name/version`` (or None).
    """
    c = client(uri)
    run = c.create_run(experiment_id(c, experiment), run_name=run_name, tags={STATUS_TAG: "production"})
    run_id = run.info.run_id
    log_params(c, run_id, params)
    log_metrics(c, run_id, metrics)
    model_id = log_model(uri, run_id, model)
    _terminate(c, run_id, "FINISHED")
    return run_id, model_id, register(uri, model_id, register_as) if register_as else None


def register(uri: str, model_id: str, name: str) -> str:
    """Register a LoggedModel in the MLflow Model Registry under ``name`` (made if new); returns ``name/version``."""
    import mlflow

    mlflow.set_tracking_uri(uri)  # register_model talks to the global tracking and registry URI
    # it prints "Successfully registered model ..." to stderr; the caller's summary line says it instead
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(f"models:/{model_id}", name)
    return f"{name}/{version.version}"


# --- reading back: the best of a space ---------------------------------------------------------------


def latest_search(space: str, uri: str | None = None, search: str | None = None,
                  smoke: bool = False) -> tuple[Any, Any]:
    """The client and the parent run of a finished search of ``space`` that names a best trial: the one named
    ``search``, else the newest that was not ``--smoke`` (``smoke=True``: the newest of any kind)."""
    uri = resolve_uri(uri)
    check_reachable(uri)
    c = client(uri)
    exp = c.get_experiment_by_name(space)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {space!r} at {uri}; run `python -m itra_tune.search --space "
                          f"{space}` first, or pass the tracking URI it used")
    runs = [r for r in c.search_runs([exp.experiment_id], f"tags.`{BEST_TAG}` != ''",
                                     order_by=["attributes.start_time DESC"], max_results=1000)
            if r.data.tags.get(PARENT_TAG) is None]
    listed = ", ".join(dict.fromkeys(r.info.run_name + (" (smoke)" if is_smoke(r) else "") for r in runs))
    if search is not None:
        named = [r for r in runs if r.info.run_name == search]
        if not named:
            raise ConfigError(f"no finished search {search!r} of {space!r} at {uri}; its searches: "
                              f"{listed or 'none'}")
        return c, named[0]
    full = [r for r in runs if smoke or not is_smoke(r)]
    if not full:
        hint = f"; its searches are all --smoke ones ({listed}): smoke=True, or itra_tune.train --smoke, takes " \
               f"the newest" if runs else ""
        raise ConfigError(f"experiment {space!r} at {uri} has no finished search with a best trial yet{hint}")
    return c, full[0]


def is_smoke(run: Any) -> bool:
    """Whether a search's parent run was a ``--smoke`` one: a handful of short trials, to try a space."""
    return run.data.tags.get(SMOKE_TAG) == "true"


def download(c: Any, run_id: str, artifact: str) -> Path:
    with _quiet():
        return Path(c.download_artifacts(run_id, artifact, tempfile.mkdtemp(prefix="itra_tune_")))


def best_model_id(c: Any, parent: Any) -> str:
    """The LoggedModel of a search's best trial (its parent run's tag)."""
    model_id = parent.data.tags.get(BEST_MODEL_TAG)
    if not model_id:
        raise ConfigError(f"search {parent.info.run_name!r} logged no model for its best trial; rerun it, or "
                          "retrain its best configuration with itra_tune.train(itra_tune.best_config(space))")
    return model_id


def load_model(uri: str, model_id: str) -> Any:
    """A LoggedModel as the torch classifier it holds (``features``, ``head``), in eval mode on the CPU."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    with _quiet():
        return mlflow.pyfunc.load_model(f"models:/{model_id}").unwrap_python_model().model


def log_figure(uri: str, run_id: str, fig: Any, artifact: str) -> None:
    client(uri).log_figure(run_id, fig, artifact)
