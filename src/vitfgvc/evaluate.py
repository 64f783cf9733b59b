"""Evaluation: predictions on a split, and the metrics of the paper's tables.

Accuracy of every stage (a: full image, b: object, c: mean of the part logits)
and of the combined prediction (the mean of the stage probabilities), top-5,
per-class accuracy and the confusion matrix; the mean column-wise ROC AUC for
Plant Pathology (its competition metric); and, where the dataset has object
boxes, how well the attention's object box finds the object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score, top_k_accuracy_score

from .data.loader import ManifestDataset


@dataclass
class Predictions:
    """Per-image results of one split, in dataset order."""

    index: np.ndarray                 # [N] dataset indices
    labels: np.ndarray                # [N]
    probs: dict[str, np.ndarray]      # stage -> [N, C]; "combined" always present
    true_boxes: np.ndarray            # [N, 4] fractions (NaN where none)
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


@torch.no_grad()
def predict(model, loader, device: torch.device, autocast) -> Predictions:
    was_training = model.training
    model.eval()
    index, labels, boxes, obj = [], [], [], []
    probs: dict[str, list] = {}
    try:
        for images, y, idx, true_boxes, _draws in loader:
            with autocast():
                out = model(images.to(device, non_blocking=True))
            for k, v in out.probabilities().items():
                probs.setdefault(k, []).append(v.float().cpu().numpy())
            index.append(idx.numpy())
            labels.append(y.numpy())
            boxes.append(true_boxes.numpy())
            if out.object_boxes is not None:
                obj.append(out.object_boxes.float().cpu().numpy())
    finally:
        model.train(was_training)
    return Predictions(np.concatenate(index), np.concatenate(labels),
                       {k: np.concatenate(v) for k, v in probs.items()}, np.concatenate(boxes),
                       np.concatenate(obj) if obj else None)


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


def metrics(pred: Predictions, classes: list[str], *, auc: bool = False) -> dict:
    """Scalar metrics of a split (percentages for accuracies), ready for a DVC metrics file."""
    y, n_classes = pred.labels, len(classes)
    out: dict[str, float | int | None] = {"images": int(len(y))}
    for stage, p in pred.probs.items():
        key = "accuracy" if stage == "combined" else f"accuracy_{stage}"
        out[key] = round(100 * float((p.argmax(1) == y).mean()), 4)
    combined = pred.probs["combined"]
    if n_classes > 5:
        out["top5"] = round(100 * float(top_k_accuracy_score(y, combined, k=5, labels=range(n_classes))), 4)
    if auc:
        present = np.unique(y)
        onehot = np.eye(n_classes)[y][:, present]
        out["mean_auc"] = round(float(roc_auc_score(onehot, combined[:, present], average="macro")), 6) \
            if len(present) > 1 else None
    has_box = ~np.isnan(pred.true_boxes).any(1)
    if pred.object_boxes is not None and has_box.any():
        iou = box_iou(pred.object_boxes[has_box], pred.true_boxes[has_box])
        cover = box_coverage(pred.object_boxes[has_box], pred.true_boxes[has_box])
        out["box_iou"] = round(float(iou.mean()), 4)
        out["box_iou50"] = round(float((iou >= 0.5).mean()), 4)
        out["box_recall"] = round(float((cover >= 0.5).mean()), 4)
    return out


def per_class(pred: Predictions, classes: list[str]) -> pd.DataFrame:
    y = pred.labels
    table = pd.DataFrame({"label": range(len(classes)), "class_name": classes,
                          "images": np.bincount(y, minlength=len(classes))})
    for stage, p in pred.probs.items():
        hit = p.argmax(1) == y
        correct = np.bincount(y, weights=hit, minlength=len(classes))
        with np.errstate(invalid="ignore", divide="ignore"):
            table[f"accuracy_{stage}"] = np.round(100 * correct / table["images"].to_numpy(), 4)
    return table


def confusion(pred: Predictions, classes: list[str]) -> pd.DataFrame:
    cm = confusion_matrix(pred.labels, pred.probs["combined"].argmax(1), labels=range(len(classes)))
    return pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=classes)


def prediction_table(pred: Predictions, dataset: ManifestDataset, classes: list[str]) -> pd.DataFrame:
    """One row per image: the image, its label, each stage's prediction and probability."""
    rows = dataset.rows.iloc[pred.index]
    table = pd.DataFrame({"image": rows["image"].to_numpy(), "label": pred.labels})
    for stage, p in pred.probs.items():
        table[f"pred_{stage}"] = p.argmax(1)
        table[f"prob_{stage}"] = np.round(p.max(1), 6)
    table["class_name"] = [classes[i] for i in pred.labels]
    table["pred_class_name"] = [classes[i] for i in pred.probs["combined"].argmax(1)]
    if pred.object_boxes is not None:
        for j, name in enumerate(("box_x0", "box_y0", "box_x1", "box_y1")):
            table[name] = np.round(pred.object_boxes[:, j], 6)
    return table
