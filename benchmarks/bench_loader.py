"""The training loader's throughput per CPU core, with the views' augmentation on the device and per sample.

At the paper profile's sizes: JPEGs stored at 448 px on their shorter side (597 x 448, as
``prepare`` stores a 4:3 photograph) and training views of 448 px (``high_res``; the model
resizes them to its 384 px input), with the paper's augmentation (``transform`` of
params.yaml: crop, flip, rotation, zoom, warp, lighting). One process, one torch thread:
items per second per core, each batch of 16 collated as the loader collates it.

- ``runtime.augment: device``: the workers decode, crop and draw (:func:`vitfgvc.data.per_item.train_item`);
  the rest runs on the training device, one batch at a time (:func:`vitfgvc.data.on_device.batch_views`),
  timed here on this machine's device per batch of 16 (on a CPU, a cost the training process itself pays);
- ``runtime.augment: per_sample``: the workers make the whole view (:func:`vitfgvc.data.per_item.train_view`).

The last line is ``loader: <X> items/s per core (augmentation on the device), <Y> (per-sample on the CPU), <X/Y>x``.

    python benchmarks/bench_loader.py [--images 96] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def write_images(root: Path, n: int, size: tuple[int, int] = (597, 448), seed: int = 0):
    """``n`` photograph-like JPEGs (smooth colour fields with grain, quality 95) and a manifest of them."""
    from vitfgvc.data.loader import Manifest

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    w, h = size
    rows = []
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8)).resize((w, h),
                                                                                                   Image.BICUBIC)
        grain = rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(np.asarray(field) + grain, 0, 255).astype(np.uint8)).save(
            root / f"images/{i}.jpg", quality=95)
        rows.append([f"images/{i}.jpg", i % 2, f"c{i % 2}", "train", w * 0.2, h * 0.2, w * 0.8, h * 0.8,
                     f"{i}.jpg", w, h])
    pd.DataFrame(rows, columns=["image", "label", "class_name", "split", "x0", "y0", "x1", "y1", "source",
                                "width", "height"]).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame({"label": [0, 1], "class_name": ["c0", "c1"]}).to_csv(root / "classes.csv", index=False)
    return Manifest.read(root)


def one_pass(ds, epoch: int) -> tuple[float, list]:
    """Items/s of making every item of ``ds`` (epoch ``epoch``) and collating them in batches of 16; the batches."""
    collate = torch.utils.data.default_collate
    ds.set_epoch(epoch)
    start = time.perf_counter()
    batches = [collate([ds[i] for i in range(s, min(s + BATCH, len(ds)))]) for s in range(0, len(ds), BATCH)]
    return len(ds) / (time.perf_counter() - start), batches


def device_step_ms(batches: list, device: torch.device, repeats: int) -> float:
    """Median milliseconds of :func:`batch_views` per batch of 16 on ``device``."""
    from vitfgvc.data.on_device import batch_views

    full = [b for b in batches if len(b[0]) == BATCH]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch_views(full[0][0], full[0][5], device)  # warm-up
    times = []
    for _ in range(repeats):
        for b in full:
            sync()
            start = time.perf_counter()
            batch_views(b[0], b[5], device)
            sync()
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(images: int = 96, repeats: int = 3, device: str = "cpu", high_res: int = 448) -> dict:
    from vitfgvc.config import TransformSection
    from vitfgvc.data.loader import ManifestDataset

    torch.set_num_threads(1)
    transform = TransformSection(**yaml.safe_load((ROOT / "params.yaml").read_text())["transform"])
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_images(Path(tmp), images)
        paths = {on_device: ManifestDataset(manifest, "train", high_res, train=True, transform=transform, seed=0,
                                            on_device=on_device) for on_device in (True, False)}
        rates: dict[bool, list[float]] = {True: [], False: []}
        for on_device, ds in paths.items():
            ds[0]  # warm-up (imports, first decode)
        for r in range(repeats):  # the two paths in turns, so that a drift in the machine's speed touches both
            for on_device, ds in paths.items():
                rate, batches = one_pass(ds, r)
                rates[on_device].append(rate)
                if on_device:
                    uint8_batches = batches
    dev = torch.device(device)
    ms = device_step_ms(uint8_batches, dev, repeats)
    x, y = statistics.median(rates[True]), statistics.median(rates[False])
    return {"device_items_s": x, "per_sample_items_s": y, "ratio": x / y, "device_ms": ms, "device": str(dev),
            "images": images, "repeats": repeats, "high_res": high_res,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU, 1 thread"}


def lines(r: dict) -> list[str]:
    out = [f"{r['images']} JPEGs of 597x448 px -> {r['high_res']} px training views (params.yaml's transform), "
           f"1 torch thread, batches of {BATCH}, median of {r['repeats']}",
           f"per item in the workers: {r['device_items_s']:.1f} items/s per core with the augmentation on the "
           f"device (decode, crop, draws), {r['per_sample_items_s']:.1f} with the whole view per sample",
           f"the batched augmentation step on {r['device']} ({r['device_name']}): {r['device_ms']:.1f} ms per batch "
           f"of {BATCH}" + (" (on a CPU this is work the training process itself does every step: the CPU profile "
                            "pays it)" if r["device"] == "cpu" else "")]
    if r["device"] == "cpu":
        whole = 1 / (1 / r["device_items_s"] + r["device_ms"] / 1000 / BATCH)
        out.append(f"both parts on one CPU core: {whole:.1f} items/s ({whole / r['per_sample_items_s']:.2f}x the "
                   "per-sample path)")
    out.append(f"loader: {r['device_items_s']:.1f} items/s per core (augmentation on the device), "
               f"{r['per_sample_items_s']:.1f} (per-sample on the CPU), {r['ratio']:.2f}x")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="where the batched augmentation step is timed (cpu, cuda)")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON instead")
    args = ap.parse_args(argv)
    r = measure(args.images, args.repeats, args.device)
    print(json.dumps(r) if args.json else "\n".join(lines(r)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
