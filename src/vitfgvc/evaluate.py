"""The evaluation stage: a trained model directory on the test split, and the metrics of the paper's tables.

Accuracy of every stage (a: full image, b: object, c: mean of the part logits)
and of the combined prediction (the mean of the stage probabilities), top-5,
per-class accuracy and the confusion matrix; the mean column-wise ROC AUC where the
dataset's registry entry asks for it (Plant Pathology: its competition metric); and,
where the dataset has object boxes, how well the attention's object box finds the object.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import RuntimeSection
from .data.loader import Manifest, ManifestDataset
from .devices import autocast_for, device_for, make_loader, peak_memory_mib
from .inference import load_model_dir, read_training, training_record
from .io import replacing_dir, write_json
from .predictions import Predictions, predict
from .tracking import RunNotFound


def top_k_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest scores (ties as scikit-learn's top_k_accuracy_score)."""
    top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((top == labels[:, None]).any(1).mean())


def metrics(pred: Predictions, classes: list[str], *, auc: bool = False) -> dict:
    """Scalar metrics of a split (percentages for accuracies), ready for a DVC metrics file."""
    y, n_classes = pred.labels, len(classes)
    out: dict[str, float | int | None] = {"images": int(len(y)), **pred.accuracies()}
    combined = pred.probs["combined"]
    if n_classes > 5:
        out["top5"] = round(100 * float(top_k_accuracy(y, combined, k=5)), 4)
    if auc:
        from sklearn.metrics import roc_auc_score  # imported here: a second of start-up every evaluation would pay

        present = np.unique(y)
        onehot = np.eye(n_classes)[y][:, present]
        out["mean_auc"] = round(float(roc_auc_score(onehot, combined[:, present], average="macro")), 6) \
            if len(present) > 1 else None
    out.update(pred.box_scores())
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
    n = len(classes)
    cm = np.bincount(pred.labels * n + pred.probs["combined"].argmax(1), minlength=n * n).reshape(n, n)
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


def evaluate_model(model_dir: Path, data: Path, out_dir: Path, metrics_path: Path, runtime: RuntimeSection, *,
                   stage: str = "evaluate", tracker_factory=None, auc: bool = False) -> dict:
    """Evaluate a model directory on the test split of ``data``; write ``out_dir`` and ``metrics_path``.

    ``out_dir`` gets the test predictions, per-class accuracy, the confusion matrix (CSV and
    PNG) and a sample attention figure, written beside it and renamed into place when
    complete; ``metrics_path`` the metrics JSON the tables read: the test metrics and the
    training's summary and record (the record beside ``metrics_path``, ``<name>_training.json``;
    ``auc``: also the mean column-wise ROC AUC). With ``tracker_factory`` the metrics and
    figures are logged to the
    training's own MLflow run (a new run where that one is not in the store, e.g. a model
    fetched with ``dvc pull`` from another machine).
    """
    from . import viz

    device = device_for()
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    loaded = load_model_dir(model_dir, device)
    cfg, classes = loaded.cfg, loaded.classes
    training = read_training(model_dir, training_record(metrics_path))
    test_ds = ManifestDataset(Manifest.read(data), "test", loaded.input_size, train=False, transform=cfg.transform,
                              on_device=runtime.augment == "device")
    images = test_ds if not runtime.limit_eval else \
        torch.utils.data.Subset(test_ds, range(min(runtime.limit_eval, len(test_ds))))  # a rehearsal
    loader = make_loader(images, batch_size=runtime.eval_batch_size, workers=runtime.workers, device=device)
    start = time.perf_counter()
    try:
        test = predict(loaded.model, loader, device, autocast_for(device, cfg.train.amp))
    except Exception as exc:  # noqa: BLE001 - annotated and re-raised
        hint = "; try a smaller runtime.eval_batch_size" if isinstance(exc, torch.OutOfMemoryError) else ""
        exc.add_note(f"{stage}: raised while predicting batches of {runtime.eval_batch_size} test images of "
                     f"{loaded.input_size} px{hint}")
        raise
    seconds = time.perf_counter() - start

    with replacing_dir(out_dir) as tmp:
        prediction_table(test, test_ds, classes).to_csv(tmp / "predictions.csv", index=False)
        per_class(test, classes).to_csv(tmp / "per_class.csv", index=False)
        cm = confusion(test, classes)
        cm.to_csv(tmp / "confusion.csv")
        viz.confusion_figure(cm, title=cfg.run_name).savefig(tmp / "confusion.png", dpi=100)
        viz.sample_figure(loaded.model, test_ds, classes, n=min(4, len(images))).savefig(tmp / "attention.png",
                                                                                          dpi=100)

    result = {"dataset": cfg.dataset, "model": cfg.model, "variant": cfg.variant, "backbone": cfg.backbone.name,
              **metrics(test, classes, auc=auc),
              **{k: training[k] for k in ("epochs", "train_seconds", "seconds_per_epoch", "train_images_per_s",
                                          "final_train_loss", "hardware")},
              "train_flops": training.get("train_flops"),  # absent from a model trained before FLOPs were counted
              "eval_seconds": round(seconds, 3), "eval_images_per_s": round(len(test.labels) / max(seconds, 1e-9), 2),
              "eval_peak_memory_mib": round(peak_memory_mib(device)[0], 1)}
    limits = {k: v for k, v in (("limit_steps", training.get("limit_steps")),
                                ("limit_eval", runtime.limit_eval or None)) if v}
    if limits:  # a rehearsal's numbers: never a result
        result["rehearsal"] = limits
    write_json(metrics_path, result)
    if tracker_factory is not None:
        _log_evaluation(tracker_factory(), cfg, training, result, data, out_dir, stage)
    return result


def _log_evaluation(tracker, cfg, training: dict, result: dict, data: Path, out_dir: Path, stage: str) -> None:
    tags = {"dvc_eval_stage": stage}
    try:
        if not training.get("mlflow_run_id"):
            raise RunNotFound("the training logged no run")
        tracker.attach(training["mlflow_run_id"], tags=tags)
    except RunNotFound:
        tracker.start(cfg.run_name, tags={"dataset": cfg.dataset, "model": cfg.model, "variant": cfg.variant or "",
                                          **tags}, params=cfg.model_dump(mode="json"), source=stage)
    status = "FAILED"
    try:
        tracker.log_data(data / "manifest.csv", cfg.dataset, splits=("test",))
        tracker.log_metrics({f"test_{k}": v for k, v in result.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=result["epochs"])
        for name in ("confusion.png", "attention.png", "per_class.csv"):
            tracker.log_artifact(out_dir / name)
        status = "FINISHED"
    finally:
        tracker.finish(status)
