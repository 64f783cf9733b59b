"""A model's predictions over a split: what validation during training and the evaluation stage share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import labels
from .data.on_device import batch_views


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    return iw * ih


def _area(x: np.ndarray) -> np.ndarray:
    return (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of ``[N, 4]`` boxes ``(x0, y0, x1, y1)``."""
    inter = _intersection(a, b)
    return inter / np.maximum(_area(a) + _area(b) - inter, 1e-12)


def box_coverage(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Share of each true box covered by the predicted box."""
    return _intersection(pred, true) / np.maximum(_area(true), 1e-12)


@dataclass
class Predictions:
    """Per-image results of one split, in dataset order."""

    index: np.ndarray                 # [N] dataset indices
    labels: np.ndarray                # [N]
    probs: dict[str, np.ndarray]      # stage -> [N, C]; "combined" always present
    true_boxes: np.ndarray            # [N, 4] fractions of the view (NaN where none)
    object_boxes: np.ndarray | None   # [N, 4] fractions predicted by the attention (multistage)

    def sorted(self) -> "Predictions":
        order = np.argsort(self.index, kind="stable")
        return Predictions(self.index[order], self.labels[order], {k: v[order] for k, v in self.probs.items()},
                           self.true_boxes[order],
                           None if self.object_boxes is None else self.object_boxes[order])

    @staticmethod
    def concat(parts: list["Predictions"]) -> "Predictions":
        first = parts[0]
        return Predictions(
            np.concatenate([p.index for p in parts]), np.concatenate([p.labels for p in parts]),
            {k: np.concatenate([p.probs[k] for p in parts]) for k in first.probs},
            np.concatenate([p.true_boxes for p in parts]),
            None if first.object_boxes is None else np.concatenate([p.object_boxes for p in parts]))

    def box_scores(self) -> dict[str, float]:
        """The object box against the true box, over the images that have both: mean IoU (``box_iou``), share
        with IoU >= 0.5 (``box_iou50``) and share covering at least half the true box (``box_recall``); {} without
        object boxes (the baseline) or true boxes."""
        if self.object_boxes is None:
            return {}
        has = ~np.isnan(self.true_boxes).any(1)
        if not has.any():
            return {}
        iou = box_iou(self.object_boxes[has], self.true_boxes[has])
        cover = box_coverage(self.object_boxes[has], self.true_boxes[has])
        return {"box_iou": round(float(iou.mean()), 4), "box_iou50": round(float((iou >= 0.5).mean()), 4),
                "box_recall": round(float((cover >= 0.5).mean()), 4)}

    def accuracies(self) -> dict[str, float]:
        """Accuracy (%) of every stage and of the combined prediction: ``accuracy_a``, ..., ``accuracy``."""
        return {labels.metric(stage): round(100 * float((p.argmax(1) == self.labels).mean()), 4)
                for stage, p in self.probs.items()}


@torch.no_grad()
def predict(model, loader, device: torch.device, autocast) -> Predictions:
    """Run ``model`` (in eval mode) over an evaluation ``loader`` of ``ManifestDataset`` items."""
    was_training = model.training
    model.eval()
    index, targets, boxes, obj = [], [], [], []
    probs: dict[str, list] = {}
    try:
        for images, y, idx, true_boxes, draws, aug in loader:
            images = batch_views(images, aug, device)
            with autocast():  # the dataset's per-image draws: a random fallback box does not depend on batching
                out = model(images, draws.to(device))
            for k, v in out.probabilities().items():
                probs.setdefault(k, []).append(v.float().cpu().numpy())
            index.append(idx.numpy())
            targets.append(y.numpy())
            boxes.append(true_boxes.numpy())
            if out.object_boxes is not None:
                obj.append(out.object_boxes.float().cpu().numpy())
    finally:
        model.train(was_training)
    return Predictions(np.concatenate(index), np.concatenate(targets),
                       {k: np.concatenate(v) for k, v in probs.items()}, np.concatenate(boxes),
                       np.concatenate(obj) if obj else None)
