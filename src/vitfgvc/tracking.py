"""MLflow tracking: one run per training stage, in the project's own store.

The store is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlflow.db``
with artifacts in ``<root>/mlartifacts``, where ``<root>`` is ``DVC_ROOT`` when
set (so ``dvc exp run --temp`` and queued experiments log into the same store
as ``dvc repro``), else the repository holding the current folder. SQLite lets
one writer in at a time: every call here holds an exclusive file lock beside the
database, so concurrent trainings are all recorded instead of failing with
"database is locked".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .config import flatten

EXPERIMENT_ARTIFACTS = "mlartifacts"


def project_root(start: str | Path | None = None) -> Path:
    """``DVC_ROOT`` if set, else the nearest folder up from ``start`` with ``dvc.yaml`` or ``.git``."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() or (folder / ".git").exists():
            return folder
    return here


def tracking_uri(root: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class Tracker:
    """A thin, lock-protected wrapper over :class:`mlflow.MlflowClient` for one run."""

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
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
                except Exception:  # created meanwhile by a concurrent process outside our lock
                    self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
            else:
                self.experiment_id = exp.experiment_id
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

    def start(self, run_name: str, *, tags: dict[str, Any], params: dict[str, Any], run_id: str | None = None) -> str:
        """Start a new run, or resume ``run_id`` (a training resumed from a checkpoint)."""
        if run_id is not None:
            self.run_id = run_id
            self._call(self.client.update_run, run_id, status="RUNNING")
            return run_id
        from mlflow.entities import Param, RunTag

        run = self._call(self.client.create_run, self.experiment_id, run_name=run_name,
                         tags={k: str(v) for k, v in tags.items() if v is not None})
        self.run_id = run.info.run_id
        flat = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
        for i in range(0, len(flat), 100):
            self._call(self.client.log_batch, self.run_id, params=flat[i:i + 100])
        self._call(self.client.log_batch, self.run_id, tags=[RunTag("mlflow.runName", run_name)])
        return self.run_id

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
