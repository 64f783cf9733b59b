"""CPU cost of attention capture and localisation, relative to a plain forward pass.

Times, on ViT-B/16 at 384 px with random weights and one batch:
  (a) the fused forward (``torch.inference_mode``),
  (b) the forward with attention capture,
  (c) the localisation on the captured attention: rollout -> object boxes on the
      24x24 map -> the object's map cropped and resized to 128x128 -> part boxes.
(a) and (b) alternate within each repeat so that drifting machine load hits both.
Goals: capture / fused <= 1.15 and localisation / fused <= 5 %.

    python benchmarks/bench_attention.py --batch 8 --repeats 5 --threads 2

Capture returns 12 x [8, 12, 577, 577] float32 probabilities (1.5 GB at batch 8).
glibc hands such large blocks back to the kernel when they are freed, so each
capture forward first-touches 1.5 GB of fresh pages, which costs more than the
explicit attention itself (slow in a VM). A long-running process that keeps its
freed memory (as CUDA's caching allocator does) sees the compute cost alone; to
measure that on CPU, run with
    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitfgvc.attention import rollout
from vitfgvc.localize import crop_resize, object_boxes, part_boxes
from vitfgvc.model import build_model

GOAL_CAPTURE = 1.15  # capture / fused
GOAL_LOCALISE = 0.05  # localisation / fused


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _stats(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def localise(attn: list[torch.Tensor], num_prefix_tokens: int, grid: tuple[int, int], part_grid: int = 128,
             map_size: int = 448):
    """The multistage localisation with the paper profile's params: object boxes ``[B, 4]``, part boxes ``[B, 2, 4]``.

    As the model: the rollout map is upsampled to ``map_size`` before the object box is found on it.
    """
    maps = rollout(attn, num_prefix_tokens=num_prefix_tokens, grid=grid)
    fine = F.interpolate(maps.unsqueeze(1), size=(map_size, map_size), mode="bilinear", align_corners=False)
    obj = object_boxes(fine.squeeze(1))
    obj_maps = crop_resize(maps.unsqueeze(1), obj, part_grid).squeeze(1)
    return obj, part_boxes(obj_maps)


def measure(
    batch: int = 8,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    model_name: str = "vit_base_patch16_384",
    img_size: int = 384,
    capture: bool | str = "mean",
) -> dict:
    """Time (a) fused forward, (b) capture forward, (c) localisation; seconds per batch.

    Returns ``{"fused": stats, "capture": stats, "localise": stats, "ratio_capture",
    "ratio_localise", "ratio_capture_paired", ...}`` with stats ``{"median", "min",
    "max"}`` over ``repeats``. The ratios are of medians; ``ratio_capture_paired`` is
    the median over repeats of capture / fused within a repeat, which a machine whose
    load drifts between repeats disturbs less.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name, 200, img_size=img_size).eval()
    x = torch.randn(batch, 3, img_size, img_size)
    times: dict[str, list[float]] = {"fused": [], "capture": [], "localise": []}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t_fused = _seconds(lambda: model(x))
            captured = []
            t_capture = _seconds(lambda: captured.append(model(x, capture_attn=capture)[1]))
            attn = captured.pop()
            t_localise = _seconds(lambda: localise(attn, model.num_prefix_tokens, model.grid))
            del attn
            if i >= warmup:
                times["fused"].append(t_fused)
                times["capture"].append(t_capture)
                times["localise"].append(t_localise)
    result = {k: _stats(v) for k, v in times.items()}
    result.update(
        capture_mode="all heads" if capture is True else f"heads fused ({capture}), as the multistage model",
        batch=batch,
        repeats=repeats,
        threads=torch.get_num_threads(),
        model=model_name,
        img_size=img_size,
        ratio_capture=result["capture"]["median"] / result["fused"]["median"],
        ratio_localise=result["localise"]["median"] / result["fused"]["median"],
        ratio_capture_paired=statistics.median(c / f for c, f in zip(times["capture"], times["fused"])),
    )
    return result


def markdown(result: dict) -> str:
    """A small Markdown table of :func:`measure`'s result."""
    lines = [
        f"{result['model']} @ {result['img_size']} px, batch {result['batch']}, "
        f"{result['threads']} threads, {result['repeats']} repeats (seconds per batch); "
        f"capture: {result['capture_mode']}",
        "",
        "| step | median | min | max |",
        "|---|---|---|---|",
    ]
    labels = {"fused": "(a) fused forward", "capture": "(b) forward + attention capture",
              "localise": "(c) rollout + object + parts"}
    for key, label in labels.items():
        s = result[key]
        lines.append(f"| {label} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    rc, rp, rl = result["ratio_capture"], result["ratio_capture_paired"], result["ratio_localise"]
    met = {True: "yes", False: "no"}
    lines += [
        "",
        "| ratio | value | goal | met |",
        "|---|---|---|---|",
        f"| capture / fused (medians) | {rc:.3f} | <= {GOAL_CAPTURE} | {met[rc <= GOAL_CAPTURE]} |",
        f"| capture / fused, paired per repeat | {rp:.3f} | <= {GOAL_CAPTURE} | {met[rp <= GOAL_CAPTURE]} |",
        f"| localisation / fused (medians) | {100 * rl:.2f} % | <= {100 * GOAL_LOCALISE:.0f} % "
        f"| {met[rl <= GOAL_LOCALISE]} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model", default="vit_base_patch16_384")
    parser.add_argument("--img-size", type=int, default=384)
    parser.add_argument("--all-heads", action="store_true",
                        help="capture every head's probabilities instead of the fused map the model uses")
    args = parser.parse_args()
    print(markdown(measure(args.batch, args.repeats, args.warmup, args.threads, args.model, args.img_size,
                           capture=True if args.all_heads else "mean")))


if __name__ == "__main__":
    main()
