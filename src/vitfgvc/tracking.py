"""MLflow tracking: one run per trained model, in the project's own store.

The store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlflow.db``
with artifacts in ``<root>/mlartifacts``, where ``<root>`` is ``DVC_ROOT`` when
set (so ``dvc exp run --temp`` and queued experiments log into the same store
as ``dvc repro``), else the repository holding the current folder. SQLite lets
one writer in at a time: every call here holds an exclusive file lock beside the
database, so concurrent trainings are all recorded instead of failing with
"database is locked".

What the MLflow UI reads, and where it comes from here:

- the experiment's kind (``mlflow.experimentKind``): a model-training experiment;
- each run's source (``mlflow.source.*``, ``mlflow.user``): the DVC stage that made
  it, at the git commit it ran from;
- each run's dataset inputs: one per split of the prepared manifest, with a digest
  of the split's manifest rows, so runs on the same data name the same dataset;
- one run per model: the training creates it, the evaluation (a second process)
  continues it by id with :meth:`Tracker.attach`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import getpass
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import flatten
from .errors import UserError

EXPERIMENT_ARTIFACTS = "mlartifacts"
# MLflow's experiment-kind tag and its value for classic model training (the UI's own
# constants; without the tag an experiment counts as GenAI and opens on traces)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# the context MLflow shows next to each dataset input, per manifest split
SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}


class RunNotFound(UserError):
    pass


def project_root(start: str | Path | None = None) -> Path:
    """``DVC_ROOT`` if set, else the nearest folder up from ``start`` with ``dvc.yaml`` or ``.git``."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    return _repository(here) or here


def _repository(here: Path) -> Path | None:
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".git").exists():
            return folder
    return None


def tracking_uri(root: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def git_commit(root: Path) -> str | None:
    return _git(root, "rev-parse", "HEAD")


def source_tags(source: str, root: Path) -> dict[str, str]:
    """MLflow's standard source tags for a run made by ``source`` from the repository at ``root``."""
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL"}
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":  # not on a detached HEAD (as in a queued DVC experiment)
            tags["mlflow.source.git.branch"] = branch
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    return tags


def split_digest(header: list[str], rows: list[list[str]]) -> str:
    """A short fingerprint of a split's manifest rows: equal for equal rows, whatever run reads them."""
    h = hashlib.sha256(json.dumps([header, *rows], separators=(",", ":")).encode())
    return h.hexdigest()[:12]


def dataset_inputs(manifest_csv: Path, dataset: str, splits: Iterable[str] | None = None) -> list:
    """One MLflow ``DatasetInput`` per split of a prepared manifest (``<dataset>-<split>``).

    The digest is computed from the manifest's text (the rows of the split), not from a
    parsed table, so it does not move with pandas' float formatting; the source is the
    manifest's path inside its repository, the same for ``dvc exp run --temp`` copies.
    """
    import pandas as pd
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag

    manifest_csv = Path(manifest_csv)
    if not manifest_csv.exists():
        raise UserError(f"{manifest_csv}: not found; run the prepare stage first")
    with open(manifest_csv, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or "split" not in header:
            raise UserError(f"{manifest_csv}: no 'split' column in the header {header}")
        rows = list(reader)
    at = header.index("split")
    wanted = list(SPLIT_CONTEXT) if splits is None else list(splits)
    unknown = [s for s in wanted if s not in SPLIT_CONTEXT]
    if unknown:
        raise UserError(f"splits {unknown}: expected some of {list(SPLIT_CONTEXT)}")
    source = LocalArtifactDatasetSource(_in_repository(manifest_csv))
    table = pd.read_csv(manifest_csv)
    inputs = []
    for split in wanted:
        split_rows = [r for r in rows if r[at] == split]
        if not split_rows:
            continue
        data = PandasDataset(table[table["split"] == split].reset_index(drop=True), source, targets="label",
                             name=f"{dataset}-{split}", digest=split_digest(header, split_rows))
        with warnings.catch_warnings():  # MLflow's hint on integer columns, meant for model signatures
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
            entity = Dataset(**data.to_dict())
        inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", SPLIT_CONTEXT[split])]))
    return inputs


class Tracker:
    """A thin, lock-protected wrapper over :class:`mlflow.MlflowClient` for one run.

    A training calls :meth:`start` (a new run, or the run of the checkpoint it resumes),
    :meth:`log_data`, :meth:`log_metrics` and :meth:`finish`; an evaluation in another
    process calls :meth:`attach` with the training's run id and logs into the same run.
    """

    def __init__(self, experiment: str, *, root: Path | None = None, uri: str | None = None):
        from mlflow import MlflowClient

        self.root = root or project_root()
        self.uri = uri or tracking_uri(self.root)
        self._lockfile = self.root / ".mlflow.lock" if self.uri.startswith("sqlite:") else None
        with self._locked():
            self.client = MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:"):
                    location = (self.root / EXPERIMENT_ARTIFACTS).as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
                except Exception:  # created meanwhile by a concurrent process outside our lock
                    exp = self.client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
            if exp is not None:
                self.experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag; a kind someone chose stays
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        self.run_id: str | None = None

    @contextlib.contextmanager
    def _locked(self):
        if self._lockfile is None:
            yield
            return
        self._lockfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lockfile, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _call(self, fn, *args, **kwargs):
        # a second line of defence for stores shared without our lock (e.g. another tool)
        for attempt in range(8):
            try:
                with self._locked():
                    return fn(*args, **kwargs)
            except Exception as exc:
                if "locked" not in str(exc).lower() or attempt == 7:
                    raise
                time.sleep(0.2 * 2**attempt)

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self._call(self.client.get_run, run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return run.info.lifecycle_stage == "active"

    def start(self, run_name: str, *, tags: dict[str, Any], params: dict[str, Any], source: str | None = None,
              run_id: str | None = None) -> str:
        """A new run; or ``run_id`` again (a killed training resumed from its checkpoint) if the store has it.

        ``source`` is what reproduces the run, shown in the UI's Source column (the DVC stage,
        e.g. ``multistage@dogs``); by default the running script, relative to the project.
        """
        if run_id is not None and self._exists(run_id):
            self.run_id = run_id
            self._call(self.client.update_run, run_id, status="RUNNING")
            return run_id
        from mlflow.entities import Param, RunTag

        if source is None:
            source = _script()
        tags = {**source_tags(source, self.root), **{k: str(v) for k, v in tags.items() if v is not None}}
        run = self._call(self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        flat = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
        for i in range(0, len(flat), 100):
            self._call(self.client.log_batch, self.run_id, params=flat[i:i + 100])
        self._call(self.client.log_batch, self.run_id, tags=[RunTag("mlflow.runName", run_name)])
        return self.run_id

    def attach(self, run_id: str, *, tags: dict[str, Any] | None = None) -> str:
        """Continue a run another process made (the evaluation of a training's run): RUNNING again.

        Its source, params and earlier metrics stay; ``tags`` are added (or updated). Raises
        :class:`RunNotFound` if the store has no such active run (e.g. the weights came from
        ``dvc pull`` of another machine's training): the caller may :meth:`start` a new run instead.
        """
        from mlflow.entities import RunTag

        if not self._exists(run_id):
            raise RunNotFound(f"MLflow run {run_id} is not in {self.uri} (or was deleted there): the model "
                              "was trained against another store, or this one was replaced since")
        self.run_id = run_id
        self._call(self.client.update_run, run_id, status="RUNNING")
        if tags:
            self._call(self.client.log_batch, run_id,
                       tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])
        return run_id

    def log_data(self, manifest_csv: str | Path, dataset: str, splits: Iterable[str] | None = None) -> list[str]:
        """Log each split of a prepared manifest present in ``splits`` (default: all) as a dataset input.

        Logging the same split again (a resumed training) adds nothing. Returns the names logged.
        """
        inputs = dataset_inputs(Path(manifest_csv), dataset, splits)
        if inputs:
            self._call(self.client.log_inputs, self.run_id, datasets=inputs)
        return [i.dataset.name for i in inputs]

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if batch:
            self._call(self.client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self._call(self.client.set_terminated, self.run_id, status)


def _in_repository(path: Path) -> str:
    """``path`` relative to the repository holding it: the same in every copy of the project."""
    path = path.resolve()
    repo = _repository(path.parent)
    return str(path.relative_to(repo) if repo else path)


def _script() -> str:
    """The running script, relative to its repository (``stages/train.py``)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return _in_repository(script) if script is not None and script.is_file() else "python"
