"""Train-step time of the multistage model against the baseline, at the same batch, on this machine.

One training step = the model's forward pass(es), the joint loss, backward and the
optimiser step, exactly as ``vitfgvc.training`` runs them. The multistage step is
measured with attention erasing on (an extra no-gradient pass on the clean image gives
the map, as the original) and off (stage a's own pass gives it), with the object and part
crops at half the input side (``multistage.object_size`` / ``part_size``: a quarter of the
tokens), and without the object crop, the parts found on the full image's map at half the
side (the CPU profile's ``parts_small``). Ideal ratios with two parts: about 4.3x (four
forward/backward passes plus one forward), 4.0x, about 2.1x and 1.8x. The FLOPs of each step (forward and
backward, counted as training counts them) are given beside the times.

Both models take the same high-res training view (the baseline resizes it to its input
size), so loading it costs both the same: the view of the paper profile's augmentation
(crop, flip, affine, lighting) is timed per image from 500x375 JPEGs, and the ratio is
also given with the batch's views loaded in the step's process (``runtime.workers: 0``,
as the CPU profile runs; with loader workers the views are made beside the step).

    python benchmarks/bench_train_step.py --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from vitfgvc.config import Params
from vitfgvc.data.loader import NUM_DRAWS
from vitfgvc.devices import keep_freed_memory
from vitfgvc.multistage import build
from vitfgvc.optim import build_optimizer, start_phase
from vitfgvc.training import Phase, counting_flops, loss_of

ROOT = Path(__file__).resolve().parents[1]
SMALL = "multistage (erasing on, object and parts at half the input side)"
PARTS = "multistage (erasing on, no object crop, parts from the full map at half the input side)"


def _config(model: str, erase_p: float, name: str, img_size: int, high_res: int, kwargs: dict,
            multistage: dict | None = None):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["model"].update(name=name, pretrained=False, img_size=img_size, kwargs=kwargs)
    data["aug"]["erase_p"] = erase_p
    data["multistage"].update(multistage or {})
    data["ablation"]["variants"] = {}  # erase_p 0 would make the no_erase variant a duplicate, which params refuse
    data["datasets"]["cub"]["high_res"] = high_res
    return Params.model_validate(data).run_config("cub", model)


def measure(batch: int = 8, repeats: int = 5, warmup: int = 1, threads: int | None = None,
            name: str = "vit_small_patch16_224", img_size: int = 224, high_res: int = 256,
            kwargs: dict | None = None, classes: int = 200) -> dict:
    """Seconds per training step (median, min, max) of baseline and multistage, and their ratios."""
    keep_freed_memory()  # as vitfgvc.training.train does on a CPU
    if threads:
        torch.set_num_threads(threads)
    kwargs = kwargs or {}
    small = {"object_size": img_size // 2, "part_size": img_size // 2}  # a quarter of the tokens
    runs = {"baseline": ("baseline", 0.5, {}), "multistage (erasing on)": ("multistage", 0.5, {}),
            "multistage (erasing off)": ("multistage", 0.0, {}),
            SMALL: ("multistage", 0.5, small),
            PARTS: ("multistage", 0.5, {"object": False, "part_size": img_size // 2})}
    times: dict[str, list[float]] = {k: [] for k in runs}
    setups, flops = {}, {}
    for key, (model_name, erase_p, overrides) in runs.items():
        cfg = _config(model_name, erase_p, name, img_size, high_res, kwargs, overrides)
        torch.manual_seed(0)
        model = build(cfg, classes).train()
        opt = build_optimizer(model.net, cfg.train)
        start_phase(model.net, opt, Phase("all", 1, 1e-4, False), cfg.train, steps_per_epoch=100)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, high_res, high_res, generator=g)  # both models take the high-res view
        labels = torch.randint(0, classes, (batch,), generator=g)
        draws = torch.rand(batch, NUM_DRAWS, generator=g)
        setups[key] = (cfg, model, opt, images, labels, draws)
        with counting_flops(flops, key):  # forward and backward, as training counts them
            loss_of(model(images, draws), labels, cfg)[0].backward()
        opt.zero_grad(set_to_none=True)

    def step(key):
        cfg, model, opt, images, labels, draws = setups[key]
        start = time.perf_counter()
        out = model(images, draws)
        loss, _ = loss_of(out, labels, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for i in range(warmup + repeats):
        for key in runs:  # interleaved, so that a drift in the machine's load touches all alike
            t = step(key)
            if i >= warmup:
                times[key].append(t)
    stats = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()}
    base = stats["baseline"]["median"]
    view = view_seconds(high_res)
    with_views = {k: v["median"] + batch * view for k, v in stats.items()}
    return {"model": name, "img_size": img_size, "high_res": high_res, "batch": batch, "repeats": repeats,
            "threads": torch.get_num_threads(), "steps": stats,
            "ratio_erase_on": stats["multistage (erasing on)"]["median"] / base,
            "ratio_erase_off": stats["multistage (erasing off)"]["median"] / base,
            "ratio_small": stats[SMALL]["median"] / base, "ratio_parts": stats[PARTS]["median"] / base,
            "small_size": small["part_size"],
            "flops": flops, "flop_ratios": {k: v / flops["baseline"] for k, v in flops.items()},
            "images_per_s": {k: batch / v["median"] for k, v in stats.items()},
            "view_seconds": view,
            "ratio_erase_on_with_views": with_views["multistage (erasing on)"] / with_views["baseline"]}


def view_seconds(high_res: int, images: int = 48, seed: int = 0) -> float:
    """Seconds per training view (decode, crop, flip, affine, lighting, normalise) of a 500x375 JPEG, one thread."""
    import tempfile

    import numpy as np
    import pandas as pd
    from PIL import Image

    from vitfgvc.data.loader import Manifest, ManifestDataset

    transform = yaml.safe_load((ROOT / "params.yaml").read_text())["transform"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        rows = []
        for i in range(images):  # smooth random colour fields: JPEG-sized like photographs
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(root / f"images/{i}.jpg", quality=95)
            rows.append([f"images/{i}.jpg", i % 2, f"c{i % 2}", "train", 50, 40, 400, 300, f"{i}.jpg", 500, 375])
        pd.DataFrame(rows, columns=["image", "label", "class_name", "split", "x0", "y0", "x1", "y1", "source",
                                    "width", "height"]).to_csv(root / "manifest.csv", index=False)
        pd.DataFrame({"label": [0, 1], "class_name": ["c0", "c1"]}).to_csv(root / "classes.csv", index=False)
        from vitfgvc.config import TransformSection

        ds = ManifestDataset(Manifest.read(root), "train", high_res, train=True,
                             transform=TransformSection(**transform), seed=seed)
        ds[0]
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        seconds = (time.perf_counter() - start) / len(ds)
    torch.set_num_threads(threads)
    return seconds


def markdown(r: dict) -> str:
    lines = [f"{r['model']}: input {r['img_size']} px, high-res {r['high_res']} px, batch {r['batch']}, "
             f"{r['threads']} threads, {r['repeats']} repeats (seconds per training step)", "",
             "| step | median | min | max | images/s | GFLOP | FLOPs / baseline |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in r["steps"].items():
        lines.append(f"| {k} | {v['median']:.3f} | {v['min']:.3f} | {v['max']:.3f} | {r['images_per_s'][k]:.1f} | "
                     f"{r['flops'][k] / 1e9:.1f} | {r['flop_ratios'][k]:.2f}x |")
    lines += ["", f"multistage / baseline: **{r['ratio_erase_on']:.2f}x** with erasing (goal <= 4.5x), "
                  f"**{r['ratio_erase_off']:.2f}x** without (stretch <= 4.0x); with the object and the parts at "
                  f"{r['small_size']} px: **{r['ratio_small']:.2f}x**; no object crop and the parts at "
                  f"{r['small_size']} px: **{r['ratio_parts']:.2f}x** (goal for the cheapest variant <= 3.0x)", "",
              f"A training view with the paper profile's augmentation (500x375 JPEG to {r['high_res']} px, one "
              f"thread): {1000 * r['view_seconds']:.1f} ms; with the batch's views made in the step's process, "
              f"multistage / baseline: **{r['ratio_erase_on_with_views']:.2f}x** (erasing on)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--high-res", type=int, default=256)
    args = ap.parse_args()
    print(markdown(measure(args.batch, args.repeats, threads=args.threads, name=args.model,
                           img_size=args.img_size, high_res=args.high_res)))


if __name__ == "__main__":
    main()
