"""Figures: where the model looked (as the paper's Figures 4 and 5), and the confusion matrix.

Built on :class:`matplotlib.figure.Figure` directly (no pyplot state, no display
needed). One row per image: the input with the object box (red) and the part
boxes, the attention map over it, the image after attention erasing, the object
crop with its attention, and the part crops.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .attention_augment import attention_erase
from .config import AugSection, RunConfig
from .data.loader import denormalize
from .data.on_device import batch_views
from .localize import crop_resize
from .multistage import StageOutput

PART_COLORS = ["#00e5ff", "#ffea00", "#76ff03", "#ff4081", "#b388ff"]
DEFAULT_ERASE_THRESHOLD = AugSection().erase_threshold


def erase_threshold(cfg: RunConfig) -> float:
    """The threshold a figure shows erasing at: the run's own, or the default for a baseline (no ``aug``)."""
    return cfg.aug.erase_threshold if cfg.aug is not None else DEFAULT_ERASE_THRESHOLD


def _rgb(x: torch.Tensor) -> np.ndarray:
    return denormalize(x.unsqueeze(0))[0].permute(1, 2, 0).float().cpu().numpy()


def _upsample(m: torch.Tensor, h: int, w: int) -> np.ndarray:
    return F.interpolate(m[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()


def _box(ax, box, w: int, h: int, color: str, lw: float = 2.0) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False, edgecolor=color, linewidth=lw))


def panels(out: StageOutput) -> list[str]:
    names = ["input"]
    if out.maps is not None:
        names += ["attention", "erased"]
    if out.object_boxes is not None:
        names += ["object"]
    if out.part_boxes is not None:
        names += [f"part {j + 1}" for j in range(out.part_boxes.shape[1])]
    return names


def draw_row(axes, image_hi: torch.Tensor, out: StageOutput, i: int, *, title: str = "",
             erase_threshold: float = DEFAULT_ERASE_THRESHOLD) -> None:
    """Fill ``axes`` (one per :func:`panels` entry) for image ``i`` of the batch ``out`` came from."""
    img = _rgb(image_hi)
    h, w = img.shape[:2]
    ax = iter(axes)
    a = next(ax)
    a.imshow(img)
    if out.object_boxes is not None:
        _box(a, out.object_boxes[i], w, h, "red", 2.5)
    if out.part_boxes is not None:
        for j, pb in enumerate(out.part_boxes[i]):
            _box(a, pb, w, h, PART_COLORS[j % len(PART_COLORS)], 1.5)
    a.set_title(title, fontsize=8)
    if out.maps is not None:
        m = out.maps[i]
        a = next(ax)
        a.imshow(img)
        a.imshow(_upsample(m, h, w), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        a.set_title("attention (rollout)", fontsize=8)
        a = next(ax)
        erased = attention_erase(image_hi.unsqueeze(0), m.unsqueeze(0), 1.0, erase_threshold)[0]
        a.imshow(_rgb(erased))
        a.set_title(f"erased (> {erase_threshold:g})", fontsize=8)
    if out.object_boxes is not None:
        a = next(ax)
        crop = crop_resize(image_hi.unsqueeze(0), out.object_boxes[i:i + 1].to(image_hi.dtype), h)[0]
        crop_map = crop_resize(out.maps[i][None, None], out.object_boxes[i:i + 1].to(out.maps.dtype), h)[0, 0]
        a.imshow(_rgb(crop))
        a.imshow(crop_map.cpu().numpy(), cmap="jet", alpha=0.4, vmin=0, vmax=1)
        a.set_title("object + its attention", fontsize=8)
    if out.part_boxes is not None:
        for j, pb in enumerate(out.part_boxes[i]):
            a = next(ax)
            a.imshow(_rgb(crop_resize(image_hi.unsqueeze(0), pb[None].to(image_hi.dtype), h)[0]))
            for spine in a.spines.values():
                spine.set_edgecolor(PART_COLORS[j % len(PART_COLORS)])
                spine.set_linewidth(3)
            a.set_title(f"part {j + 1}", fontsize=8)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])


@torch.no_grad()
def explain(model, images_hi: torch.Tensor, draws: torch.Tensor | None = None) -> StageOutput:
    """The evaluation forward pass with everything a figure needs (maps, boxes)."""
    was = model.training
    model.eval()
    try:
        return model(images_hi, draws, with_maps=True)
    finally:
        model.train(was)


def grid_figure(images_hi: torch.Tensor, out: StageOutput, titles: list[str], *,
                erase_threshold: float = DEFAULT_ERASE_THRESHOLD, panel: float = 2.2) -> Figure:
    names = panels(out)
    n = images_hi.shape[0]
    fig = Figure(figsize=(panel * len(names), panel * n + 0.2), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, len(names), squeeze=False))
    for i in range(n):
        draw_row(axes[i], images_hi[i].float().cpu(), _to_cpu(out), i, title=titles[i],
                 erase_threshold=erase_threshold)
    return fig


def _to_cpu(out: StageOutput) -> StageOutput:
    cpu = lambda t: None if t is None else t.detach().float().cpu()  # noqa: E731
    return StageOutput({k: cpu(v) for k, v in out.logits.items()}, cpu(out.maps), cpu(out.object_boxes),
                       cpu(out.part_boxes))


def explain_items(model, ds, indices, classes: list[str]) -> tuple[torch.Tensor, StageOutput, list[str]]:
    """Items ``indices`` of an evaluation dataset explained by ``model``: the images, the output, a title each."""
    device = next(model.parameters()).device
    items = [ds[int(i)] for i in indices]
    images = batch_views(torch.stack([it[0] for it in items]),
                         {"params": torch.stack([it[5]["params"] for it in items])}, device)
    out = explain(model, images, torch.stack([it[4] for it in items]).to(device))
    pred = out.probabilities()["combined"].argmax(1).cpu()
    titles = [f"true: {classes[it[1]]}\npredicted: {classes[int(p)]}" for it, p in zip(items, pred)]
    return images, out, titles


def sample_figure(model, ds, classes: list[str], n: int = 4) -> Figure:
    """The first ``n`` images of ``ds`` (an evaluation dataset) explained by ``model``, in one figure."""
    images, out, titles = explain_items(model, ds, range(min(n, len(ds))), classes)
    return grid_figure(images, out, titles, erase_threshold=erase_threshold(model.cfg))


def confusion_figure(cm: pd.DataFrame, *, title: str = "") -> Figure:
    n = len(cm)
    side = min(12.0, 3 + 0.25 * n)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    values = cm.to_numpy().astype(float)
    rows = values.sum(1, keepdims=True)
    norm = np.divide(values, rows, out=np.zeros_like(values), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.7, label="share of the true class")
    if n <= 30:
        ax.set_xticks(range(n), [str(c)[:18] for c in cm.columns], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c)[:18] for c in cm.index], fontsize=7)
        if n <= 12:
            for r in range(n):
                for c in range(n):
                    ax.text(c, r, int(values[r, c]), ha="center", va="center", fontsize=7,
                            color="white" if norm[r, c] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix {title}".strip())
    return fig


def select(out: StageOutput, i: int) -> StageOutput:
    """Image ``i`` of a batch's output, as a batch of one."""
    one = lambda t: None if t is None else t[i:i + 1]  # noqa: E731
    return StageOutput({k: v[i:i + 1] for k, v in out.logits.items()}, one(out.maps), one(out.object_boxes),
                       one(out.part_boxes))
