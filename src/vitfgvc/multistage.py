"""The two models of the paper's tables around one shared :class:`~vitfgvc.model.FGVCViT`.

- :class:`Baseline`: the ViT with the paper's head on the full image (the "ViT" rows).
- :class:`MultiStage`: stage a (the full image), stage b (the object box cut from the
  high-resolution image), stage c (the top-k part boxes, found on the object's
  cropped attention map and cut from the high-resolution image); one encoder and
  one head serve all three. Attention-guided erasing and cropping act in training.

Both take a batch of images and return a :class:`StageOutput`; everything a
training step, the evaluation, the figures and ``vitfgvc predict`` need comes
from that one forward pass, so DDP sees one forward per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import last_layer, rollout
from .attention_augment import attention_crop_boxes, attention_erase
from .config import RunConfig
from .data.loader import NUM_DRAWS, Draw
from .localize import compose_boxes, crop_resize, object_boxes, part_boxes
from .model import FGVCViT, build_model

@dataclass
class StageOutput:
    """Logits per stage: ``a`` and ``b`` ``[B, C]``, ``c`` ``[B, k, C]`` (one row per part).

    ``maps`` ``[B, gh, gw]`` is the attention map of the clean full image; boxes are
    ``(x0, y0, x1, y1)`` fractions of the full image. ``views`` holds the stage
    inputs (for figures) when asked for.
    """

    logits: dict[str, Tensor]
    maps: Tensor | None = None
    object_boxes: Tensor | None = None
    part_boxes: Tensor | None = None
    views: dict[str, Tensor] = field(default_factory=dict)

    def stage_logits(self) -> dict[str, Tensor]:
        """``[B, C]`` per stage; stage c is the mean of the part logits."""
        return {k: (v.mean(1) if k == "c" else v) for k, v in self.logits.items()}

    def probabilities(self) -> dict[str, Tensor]:
        """Softmax per stage, and ``combined``: the mean of the stage probabilities."""
        probs = {k: v.float().softmax(-1) for k, v in self.stage_logits().items()}
        probs["combined"] = torch.stack(list(probs.values())).mean(0)
        return probs


def joint_loss(out: StageOutput, labels: Tensor, *, label_smoothing: float, part_loss: str = "sum"
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_a + L_b + sum_i L_ci`` (``part_loss="mean"``: the mean over the parts, as the original code)."""
    ce = partial(F.cross_entropy, label_smoothing=label_smoothing)
    parts = {}
    for name, logits in out.logits.items():
        if name == "c":
            k = logits.shape[1]
            per_part = ce(logits.flatten(0, 1).float(), labels.repeat_interleave(k), reduction="none").view(-1, k)
            parts[name] = per_part.mean(0).sum() if part_loss == "sum" else per_part.mean()
        else:
            parts[name] = ce(logits.float(), labels)
    return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Baseline(nn.Module):
    """The full-image ViT. With ``with_maps`` it also returns its rollout map (for figures)."""

    def __init__(self, net: FGVCViT, cfg: RunConfig):
        super().__init__()
        self.net, self.cfg = net, cfg
        self.input_size = cfg.high_res  # fed the multistage model's view; forward resizes it

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes with the epoch for the baseline."""

    def forward(self, images: Tensor, draws: Tensor | None = None, *, with_maps: bool = False,
                keep_views: bool = False) -> StageOutput:
        x = _resize(images, self.cfg.backbone.img_size)
        if not with_maps:
            return StageOutput({"a": self.net(x)}, views={"a": x} if keep_views else {})
        logits, attn = self.net(x, capture_attn="mean")
        maps = rollout([a.detach() for a in attn], num_prefix_tokens=self.net.num_prefix_tokens, grid=self.net.grid)
        return StageOutput({"a": logits}, maps=maps, views={"a": x} if keep_views else {})


class MultiStage(nn.Module):
    """Stages a, b, c over one encoder and head; see the module docstring."""

    def __init__(self, net: FGVCViT, cfg: RunConfig):
        super().__init__()
        if cfg.multistage is None or cfg.aug is None:
            raise ValueError("MultiStage needs a multistage run config")
        self.net, self.cfg = net, cfg
        self.ms, self.aug = cfg.multistage, cfg.aug
        self.input_size = cfg.high_res
        self.full_image_only = False
        size = cfg.backbone.img_size
        self.object_size, self.part_size = self.ms.object_size or size, self.ms.part_size or size
        patch = getattr(getattr(net.encoder, "patch_embed", None), "patch_size", (1, 1))
        for key, side in (("object_size", self.object_size), ("part_size", self.part_size)):
            if side != size and (side % patch[0] or side % patch[1]):
                raise ValueError(f"multistage.{key} = {side} is not a multiple of the encoder's patch size "
                                 f"{tuple(patch)} ({cfg.backbone.name})")

    def set_epoch(self, epoch: int) -> None:
        """Before ``multistage.start_epoch`` training sees the full image alone (stage a)."""
        self.full_image_only = epoch < self.ms.start_epoch

    def attention_map(self, attn: list[Tensor]) -> Tensor:
        attn = [a.detach() for a in attn]
        if self.ms.attention == "last_layer":
            return last_layer(attn, head_fusion=self.ms.head_fusion, num_prefix_tokens=self.net.num_prefix_tokens,
                              grid=self.net.grid)
        return rollout(attn, head_fusion=self.ms.head_fusion, discard_ratio=self.ms.discard_ratio,
                       num_prefix_tokens=self.net.num_prefix_tokens, grid=self.net.grid)

    def _draws(self, draws: Tensor | None, b: int, device: torch.device) -> Tensor:
        """``draws`` checked, or stand-ins: torch's global generator in training, a fixed seed in evaluation."""
        if draws is None:
            # evaluation and predict stay deterministic (a random fallback box reads draws too)
            gen = None if self.training else torch.Generator().manual_seed(0)
            return torch.rand(b, NUM_DRAWS, generator=gen).to(device)
        if draws.ndim != 2 or draws.shape[0] != b or draws.shape[1] < NUM_DRAWS:
            raise ValueError(f"draws must be [{b}, {NUM_DRAWS}] per-image uniforms (columns: data.loader.Draw), "
                             f"got shape {tuple(draws.shape)}")
        return draws.to(device)

    def forward(self, images: Tensor, draws: Tensor | None = None, *, with_maps: bool = True,
                keep_views: bool = False) -> StageOutput:
        """``images`` ``[B, 3, H, H]`` at the high-res size, normalised (the map is always computed).

        ``draws`` ``[B, NUM_DRAWS]`` per-image uniforms (the dataset's; columns:
        :class:`~vitfgvc.data.loader.Draw`) make every random choice: erasing and
        attention-cropping stage a and erasing stage b (training only), the crop
        threshold, and a random fallback object box. Without them, training draws from
        torch's global generator and evaluation from a fixed seed.
        """
        ms, aug, size = self.ms, self.aug, self.cfg.backbone.img_size
        hi = images
        x_a = _resize(hi, size)
        b = hi.shape[0]
        if self.training and self.full_image_only:
            return StageOutput({"a": self.net(x_a)})
        erase = self.training and aug.erase_p > 0
        crop = self.training and aug.crop_p > 0
        draws = self._draws(draws, b, hi.device)
        views: dict[str, Tensor] = {}

        if erase or crop:
            # the map comes from the clean image, in an extra pass without gradients (as the original)
            with torch.no_grad():
                _, attn = self.net(x_a, capture_attn=self.ms.head_fusion)
            maps = self.attention_map(attn)
            view_a, map_a = x_a, maps
            if crop:
                crop_b4 = attention_crop_boxes(maps, aug.crop_p, tuple(aug.crop_threshold), aug.crop_pad,
                                               u_apply=draws[:, Draw.CROP_A], u_threshold=draws[:, Draw.CROP_THRESHOLD])
                view_a = crop_resize(hi, crop_b4, size)
                map_a = crop_resize(maps.unsqueeze(1), crop_b4, tuple(maps.shape[-2:])).squeeze(1)
            if erase:
                view_a = attention_erase(view_a, map_a, aug.erase_p, aug.erase_threshold,
                                         u_apply=draws[:, Draw.ERASE_A])
            logits_a = None
        else:
            # no augmentation needs the clean map first: stage a's own pass gives it
            view_a = x_a
            logits_a, attn = self.net(x_a, capture_attn=self.ms.head_fusion)
            maps = self.attention_map(attn)

        full = torch.tensor([0.0, 0.0, 1.0, 1.0], device=hi.device).expand(b, 4)
        obj = full
        if ms.object:
            fine = F.interpolate(maps.unsqueeze(1), size=(ms.map_size, ms.map_size), mode="bilinear",
                                 align_corners=False).squeeze(1)
            obj = object_boxes(fine, threshold=ms.threshold, threshold_k=ms.threshold_k, closing=ms.closing,
                               min_area=ms.min_area,
                               fallback=ms.fallback, closing_footprint=ms.closing_footprint,
                               small_components=ms.small_components,
                               u_fallback=draws[:, Draw.FALLBACK_BOX:Draw.FALLBACK_BOX + 4])
        obj_map = None
        if ms.parts or (ms.object and erase):
            obj_map = crop_resize(maps.unsqueeze(1), obj, ms.part_grid).squeeze(1)  # [B, g, g], max ~1

        inputs: dict[str, Tensor] = {} if logits_a is not None else {"a": view_a}
        parts_abs = None
        if ms.object:
            x_b = crop_resize(hi, obj, self.object_size)
            inputs["b"] = attention_erase(x_b, obj_map, aug.erase_p, aug.erase_threshold,
                                          u_apply=draws[:, Draw.ERASE_B]) if erase else x_b
        if ms.parts:
            rel = part_boxes(obj_map, window=ms.part_window, k=ms.num_parts, iou=ms.part_iou, pool=ms.part_pool,
                             gem_p=ms.gem_p)
            parts_abs = compose_boxes(obj, rel)
            if ms.parts_from_erased and ms.object and erase:
                x_c = crop_resize(inputs["b"], rel, self.part_size)  # the original: parts of the erased object crop
            else:
                x_c = crop_resize(hi, parts_abs, self.part_size)
            inputs["c"] = x_c.flatten(0, 1)

        out = {"a": logits_a} if logits_a is not None else {}
        out.update(self._logits(inputs))
        out = {k: out[k] for k in ("a", "b", "c") if k in out}
        if ms.parts:
            out["c"] = out["c"].view(b, ms.num_parts, -1)
        if keep_views:
            views = {"a": view_a, **{k: v for k, v in inputs.items() if k != "a"}}
            if ms.parts:
                views["c"] = inputs["c"].view(b, ms.num_parts, *inputs["c"].shape[1:])
        return StageOutput(out, maps=maps, object_boxes=obj if ms.object else None, part_boxes=parts_abs,
                           views=views)

    def _logits(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Logits of each stage's input; the inputs of one size go through the encoder as one batch
        (every stage at the model's size: one pass for all)."""
        by_size: dict[tuple[int, int], list[str]] = {}
        for name, x in inputs.items():
            by_size.setdefault(tuple(x.shape[-2:]), []).append(name)
        out = {}
        for names in by_size.values():
            logits = self.net(torch.cat([inputs[n] for n in names]) if len(names) > 1 else inputs[names[0]])
            out.update(zip(names, logits.split([inputs[n].shape[0] for n in names])))
        return out


def build(cfg: RunConfig, num_classes: int, *, load_pretrained: bool = True,
          grad_checkpointing: bool = False) -> Baseline | MultiStage:
    """The model of a run config; ``load_pretrained=False`` skips the hub/local weights (to load a trained state)."""
    bb = cfg.backbone
    kwargs = dict(bb.kwargs)
    ms = cfg.multistage if cfg.model == "multistage" else None
    if ms is not None and {ms.object_size, ms.part_size} - {None, bb.img_size}:
        kwargs.setdefault("dynamic_img_size", True)  # crops at another size: timm resamples the position embedding
    net = build_model(bb.name, num_classes, img_size=bb.img_size,
                      pretrained=load_pretrained and bb.pretrained and bb.weights is None,
                      weights=bb.weights if load_pretrained else None, kwargs=kwargs,
                      grad_checkpointing=grad_checkpointing, final_norm=bb.final_norm)
    return (Baseline if cfg.model == "baseline" else MultiStage)(net, cfg)
