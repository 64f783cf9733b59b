"""Two runs of the pipeline compared: the same results, whatever ran them and however fast.

A rerun of a stage writes the same bytes, but for what it measured: wall-clock seconds,
images per second, peak memory, the hardware, the MLflow run's id. Those live in known places
only (the training's record ``metrics/<d>/<name>_training.json``, the history's timing columns,
the evaluation metrics' timing keys, the tables at equal compute); everything else, the model
directories, the evaluations, the prepared data, is compared byte for byte. Used by the kill
test, the parallel-repro tests and ``benchmarks/bench_parallel.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import yaml

# keys of the metrics and training-record JSONs that are measurements, not results
MEASURED_KEYS = {"eval_seconds", "eval_images_per_s", "eval_peak_memory_mib", "train_seconds", "seconds_per_epoch",
                 "train_images_per_s", "peak_memory_mib", "memory", "hardware", "mlflow_run_id"}
# history columns that are measurements
MEASURED_COLUMNS = {"seconds", "cum_seconds", "seconds_per_step", "data_seconds", "optimizer_seconds", "images_per_s",
                    "peak_memory_mib"}
# MLflow metrics that are measurements (the history's timing columns, the evaluation's timing keys)
MEASURED_METRIC = re.compile(r"seconds|images_per_s|peak_memory")
# report-table columns that are measurements ("s / epoch", "Train seconds", ...)
MEASURED_HEADER = re.compile(r"second|\bs / |images/s|memory", re.I)
# output locations whose files carry measurements: compared by :func:`digest`, not by DVC's hash
MEASURED_PLACES = ("metrics", "reports")


def normalised(path: Path) -> bytes:
    """A file's content without its measurements (timing keys and columns, the equal-compute figures, which plot
    training seconds); the report tables by their CSVs (their Markdown and LaTeX render the same numbers)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        value = json.loads(data)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in MEASURED_KEYS}
        return json.dumps(value, sort_keys=True).encode()
    if path.name.startswith("compute_"):
        return b""  # accuracy against training seconds: a measurement throughout
    if path.suffix == ".csv" and path.name.endswith("_history.csv"):
        import pandas as pd

        frame = pd.read_csv(io.BytesIO(data))
        return frame.drop(columns=[c for c in frame if c in MEASURED_COLUMNS]).to_csv(index=False).encode()
    if path.suffix == ".csv" and path.parent.name == "tables":  # a report table: without its columns of time
        import pandas as pd

        frame = pd.read_csv(io.BytesIO(data))
        return frame.drop(columns=[c for c in frame if MEASURED_HEADER.search(str(c))]).to_csv(index=False).encode()
    if path.suffix == ".tex" or path.name == "tables.md":
        return b""  # the report tables rendered again: their CSVs are compared
    return data


def digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) -> the hash of its :func:`normalised` content."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
    return {str(f.relative_to(path.parent)): hashlib.sha256(normalised(f)).hexdigest() for f in files}


def _measured(path: str) -> bool:
    return path.split("/", 1)[0] in MEASURED_PLACES


def lock_entries(root: Path) -> dict[str, dict[str, str]]:
    """Per stage in ``dvc.lock``: its outs' and deps' hashes (``outs:<path>``, ``deps:<path>``), its params."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    out: dict[str, dict[str, str]] = {}
    for stage, entry in lock.items():
        row = {f"{kind}:{e['path']}": e.get("md5", e.get("hash", "")) for kind in ("outs", "deps")
               for e in entry.get(kind, [])}
        row["params"] = json.dumps(entry.get("params", {}), sort_keys=True)
        out[stage] = row
    return out


def compare(a: Path, b: Path, *, mlflow_a: str | None = None, mlflow_b: str | None = None) -> list[str]:
    """Differences between two projects' pipeline outcomes (empty: the same results): the stages in
    ``dvc.lock``, every out and dep hash but where measurements live, those places' files without their
    measurements, and the MLflow runs (names, params, metrics but the measured ones) of each project's store
    (``mlflow_a`` / ``mlflow_b``: another tracking URI, e.g. a server's store)."""
    la, lb = lock_entries(a), lock_entries(b)
    diffs = [f"stage {s} only in {a if s in la else b}" for s in sorted(set(la) ^ set(lb))]
    for stage in sorted(set(la) & set(lb)):
        for key in sorted(set(la[stage]) | set(lb[stage])):
            path = key.split(":", 1)[-1]
            if key.startswith(("outs:", "deps:")) and _measured(path):
                continue  # compared below, file by file, without the measurements
            if la[stage].get(key) != lb[stage].get(key):
                diffs.append(f"{stage}: {key} differs")
    for place in MEASURED_PLACES:
        da, db = digest(a / place), digest(b / place)
        diffs += [f"{f} differs beyond its measurements" for f in sorted(set(da) | set(db)) if da.get(f) != db.get(f)]
    diffs += compare_mlflow(mlflow_a or store(a), mlflow_b or store(b))
    return diffs


def store(root: Path) -> str:
    """A project's own MLflow store (vitfgvc.tracking's default)."""
    return f"sqlite:///{root / 'mlflow.db'}"


def mlflow_runs(uri: str) -> dict[str, dict]:
    """The MLflow runs at ``uri`` by name: status, params, and metrics other than measurements."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            key = r.info.run_name
            assert key not in runs, f"{uri}: two MLflow runs named {key}"
            runs[key] = {"status": r.info.status, "params": r.data.params,
                         "metrics": {k: v for k, v in r.data.metrics.items() if not MEASURED_METRIC.search(k)}}
    return runs


def compare_mlflow(a: str, b: str) -> list[str]:
    ra, rb = mlflow_runs(a), mlflow_runs(b)
    diffs = [f"MLflow run {n} only in {a if n in ra else b}" for n in sorted(set(ra) ^ set(rb))]
    for name in sorted(set(ra) & set(rb)):
        for part in ("status", "params", "metrics"):
            if ra[name][part] != rb[name][part]:
                diffs.append(f"MLflow run {name}: {part} differ")
    return diffs
