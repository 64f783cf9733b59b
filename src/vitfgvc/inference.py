"""Using a trained model directory (``models/<dataset>/<model>/``) outside training.

A model directory holds everything needed: ``model.safetensors`` (the encoder and
head), ``config.yaml`` (the resolved run config) and ``classes.csv``; nothing is
read from ``params.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .config import ParamsError, RunConfig
from .data.loader import eval_image, read_classes
from .images import target_size
from .errors import UserError
from .multistage import Baseline, MultiStage, build

# the model directory a training writes (models/<dataset>/<name>/)
WEIGHTS, CONFIG, CLASSES = "model.safetensors", "config.yaml", "classes.csv"
TRAINING_SUMMARY = "training.json"  # what the training computed: epochs, FLOPs, final loss, batch, parameters
# how it ran, beside its history: metrics/<dataset>/<name>_training.json (seconds, images/s, memory, hardware,
# processes, the MLflow run id). Kept out of the model directory, so that the same training gives the same
# directory (and DVC hash) whatever the machine's speed
TRAINING_RECORD = "_training.json"


def training_record(metrics_file: Path) -> Path:
    """The training record beside a run's metrics file (``metrics/<d>/<name>.json`` or ``<name>_history.csv``)."""
    stem = metrics_file.name.removesuffix(".json").removesuffix("_history.csv")
    return metrics_file.with_name(stem + TRAINING_RECORD)


def read_training(model_dir: Path, record: Path) -> dict:
    """A training's summary and its record, as one dict."""
    return {**json.loads((Path(model_dir) / TRAINING_SUMMARY).read_text()), **json.loads(Path(record).read_text())}


REQUIRED = (WEIGHTS, CONFIG, CLASSES)


class ModelDirError(UserError, ValueError):
    pass


@dataclass
class Loaded:
    model: Baseline | MultiStage
    cfg: RunConfig
    classes: list[str]
    device: torch.device

    @property
    def input_size(self) -> int:
        """The side of the evaluation view: the high-res size (both models; the model resizes it itself)."""
        return self.model.input_size

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """As the pipeline: the shorter side capped at the high-res size (prepare), then the evaluation view."""
        img = img.convert("RGB")
        if self.cfg.high_res:
            size = target_size(*img.size, self.cfg.high_res)
            if size != img.size:
                img = img.resize(size, Image.BICUBIC)
        return eval_image(img, self.input_size, self.cfg.transform)


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    from safetensors.torch import load_file

    path = Path(path)
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise ModelDirError(f"{path}: not a trained model directory (missing {', '.join(missing)}; expected the "
                            "output of a training stage, e.g. models/cub/multistage)")
    try:
        cfg = RunConfig.from_yaml(path / "config.yaml")
    except ParamsError as exc:
        raise ModelDirError(str(exc)) from None
    classes = read_classes(path / "classes.csv")
    model = build(cfg, len(classes), load_pretrained=False)
    try:
        model.net.load_state_dict(load_file(str(path / "model.safetensors")))
    except RuntimeError as exc:
        raise ModelDirError(f"{path / 'model.safetensors'}: does not fit the model of config.yaml: {exc}") from None
    device = torch.device(device)
    return Loaded(model.eval().to(device), cfg, classes, device)
