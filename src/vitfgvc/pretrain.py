"""Pretraining the profile's encoder on a source task (a ``pretrain@<source>`` stage).

A pretraining is the baseline's classification training (:func:`vitfgvc.training.train`:
progress, checkpoints, resume after a kill, determinism) on a pretraining source, the
generated ``fractals`` (:mod:`vitfgvc.data.fractals`), with the profile's architecture
(``model.name``, ``img_size``, ``kwargs``) started from scratch. Its outputs:

- ``models/pretrain/<source>/``: the run's model directory, and ``encoder.safetensors``, the
  encoder's weights alone (no head), which a training loads through ``model.weights``;
- ``metrics/pretrain/<source>.json``: what it saw and cost (images, classes, epochs,
  seconds, FLOPs), beside the training record and history every training writes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import PRETRAIN_DIR, Params, RunConfig
from .inference import WEIGHTS
from .io import atomic_write_bytes, write_json
from .training import RunPaths, train

ENCODER = "encoder.safetensors"


def run_paths(source: str, root: Path = Path(".")) -> RunPaths:
    return RunPaths(root / "data/prepared" / source, root / PRETRAIN_DIR / source,
                    root / "metrics/pretrain" / f"{source}_history.csv", root / "checkpoints/pretrain" / source)


def record_path(source: str, root: Path = Path(".")) -> Path:
    return root / "metrics/pretrain" / f"{source}.json"


def run_config(params: Params, source: str) -> RunConfig:
    """The baseline's run on ``source`` with the profile's architecture from scratch (never its own output)."""
    cfg = params.run_config(source, "baseline")
    backbone = cfg.backbone.model_copy(update={"pretrained": False, "weights": None})
    return cfg.model_copy(update={"backbone": backbone})


def export_encoder(model_dir: Path) -> Path:
    """``encoder.safetensors`` beside the run's weights: the ``encoder.`` tensors, the prefix dropped."""
    from safetensors.torch import load_file, save

    weights = load_file(str(model_dir / WEIGHTS))
    encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    if not encoder:
        raise RuntimeError(f"{model_dir / WEIGHTS}: no encoder.* tensors to export")
    atomic_write_bytes(model_dir / ENCODER, save(encoder))
    return model_dir / ENCODER


def pretrain(params: Params, source: str, *, tracker_factory=None, progress: bool = True) -> dict | None:
    """Train, export the encoder, write the record; the record (None on a process other than the main one)."""
    paths = run_paths(source)
    summary = train(run_config(params, source), params.runtime, paths, stage=f"pretrain@{source}",
                    tracker_factory=tracker_factory, progress=progress)
    if summary is None:
        return None
    encoder = export_encoder(paths.model_dir)
    splits = pd.read_csv(paths.data / "manifest.csv")["split"].value_counts()
    history = pd.read_csv(paths.history)
    record = {"source": source, "format": params.dataset(source).format, "encoder": str(encoder),
              "classes": len(pd.read_csv(paths.data / "classes.csv")),
              "train_images": int(splits.get("train", 0)), "val_images": int(splits.get("val", 0)),
              "epochs": summary["epochs"], "train_flops": summary["train_flops"],
              "train_seconds": summary["train_seconds"], "processes": summary["processes"],
              "final_val_accuracy": float(history["val_accuracy"].dropna().iloc[-1])
              if "val_accuracy" in history and history["val_accuracy"].notna().any() else None}
    write_json(record_path(source), record)
    return record
