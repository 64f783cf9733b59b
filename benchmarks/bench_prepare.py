"""Prepare throughput: the real ``prepare`` stage against a bare PIL decode+resize+save loop.

Builds a CUB-200-2011-shaped tree of ``--images`` photo-like 500x375 JPEGs (CUB's
typical size), then measures, in the same run and over ``--repeats`` repeats:

- ``prepare("cub", ...)`` with ``runtime.prepare_workers`` processes (parse, decode, convert,
  store at ``target_size`` for the 448 px high-res size: the shorter side at most 448, never
  upscaled, so a 500x375 photo keeps its size; save, manifest, splits);
- a bare single-process loop: ``Image.open -> convert("RGB") -> resize to target_size -> save``.

    python benchmarks/bench_prepare.py --images 400 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vitfgvc.config import Params
from vitfgvc.data.prepare import prepare
from vitfgvc.images import target_size


def make_cub_tree(root: Path, n: int, size=(500, 375), seed: int = 0) -> list[Path]:
    """A CUB-layout tree (images.txt & co.) of ``n`` photo-like JPEGs."""
    rng = np.random.default_rng(seed)
    base = root / "CUB_200_2011"
    classes = [f"{i + 1:03d}.Bird_{i + 1}" for i in range(10)]
    paths, lines = [], {k: [] for k in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    w, h = size
    for i in range(n):
        cls = i % len(classes)
        rel = f"{classes[cls]}/Bird_{i:05d}.jpg"
        path = base / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # smooth colour fields plus fine texture: JPEGs of a natural photo's size and decode cost
        low = rng.random((12, 16, 3))
        img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
        img += rng.normal(0, 18, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=75)
        paths.append(path)
        lines["images"].append(f"{i + 1} {rel}")
        lines["image_class_labels"].append(f"{i + 1} {cls + 1}")
        lines["train_test_split"].append(f"{i + 1} {int(i % 2 == 0)}")
        lines["bounding_boxes"].append(f"{i + 1} 60.0 27.0 325.0 304.0")
    (base / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    for name, rows in lines.items():
        (base / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return paths


def bare_loop(paths: list[Path], out: Path, high_res: int, quality: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            rgb = im.convert("RGB")
            rgb.resize(target_size(*rgb.size, high_res), Image.BICUBIC).save(out / f"{i}.jpg", quality=quality)


def measure(images: int = 400, workers: int = 2, repeats: int = 3, high_res: int = 448) -> dict:
    import yaml

    params_path = Path(__file__).resolve().parents[1] / "params.yaml"
    data = yaml.safe_load(params_path.read_text())
    data["runtime"]["prepare_workers"] = workers
    data["datasets"]["cub"]["high_res"] = high_res
    params = Params.model_validate(data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_cub_tree(tmp / "raw", images)
        stage, bare = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            bare_loop(paths, tmp / "bare", high_res, params.prepare.jpeg_quality)
            bare.append(images / (time.perf_counter() - start))
            shutil.rmtree(tmp / "bare")
            start = time.perf_counter()
            prepare("cub", params, tmp / "raw", tmp / "prepared", progress=False)
            stage.append(images / (time.perf_counter() - start))
    return {"images": images, "workers": workers, "stage_images_per_s": stage, "bare_images_per_s": bare,
            "ratio": statistics.median(stage) / statistics.median(bare)}


def markdown(r: dict) -> str:
    def row(name, values):
        return f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |"

    return "\n".join([
        f"{r['images']} JPEGs of 500x375 px -> stored at {'x'.join(map(str, target_size(500, 375, 448)))} (shorter "
        f"side at most 448, never upscaled), runtime.prepare_workers = {r['workers']}",
        "",
        "| images/s | median | min | max |",
        "| --- | --- | --- | --- |",
        row("prepare stage", r["stage_images_per_s"]),
        row("bare PIL loop (1 process)", r["bare_images_per_s"]),
        "",
        f"prepare / bare: **{r['ratio']:.2f}x** (goal >= 0.8x)",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(markdown(measure(args.images, args.workers, args.repeats)))


if __name__ == "__main__":
    main()
