"""Train-step time of the multistage model against the baseline, at the same batch, on this machine.

One training step = the model's forward pass(es), the joint loss, backward and the
optimiser step, exactly as ``vitfgvc.training`` runs them. The multistage step is
measured with attention erasing on (an extra no-gradient pass on the clean image gives
the map, as the original) and off (stage a's own pass gives it). Ideal ratios with two
parts: about 4.3x (four forward/backward passes plus one forward) and 4.0x.

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
from vitfgvc.multistage import build
from vitfgvc.optim import build_optimizer, start_phase
from vitfgvc.training import Phase, loss_of

ROOT = Path(__file__).resolve().parents[1]


def _config(model: str, erase_p: float, name: str, img_size: int, high_res: int, kwargs: dict):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["model"].update(name=name, pretrained=False, img_size=img_size, kwargs=kwargs)
    data["aug"]["erase_p"] = erase_p
    data["datasets"]["cub"]["high_res"] = high_res
    return Params.model_validate(data).run_config("cub", model)


def measure(batch: int = 8, repeats: int = 5, warmup: int = 1, threads: int | None = None,
            name: str = "vit_small_patch16_224", img_size: int = 224, high_res: int = 256,
            kwargs: dict | None = None, classes: int = 200) -> dict:
    """Seconds per training step (median, min, max) of baseline and multistage, and their ratios."""
    if threads:
        torch.set_num_threads(threads)
    kwargs = kwargs or {}
    runs = {"baseline": ("baseline", 0.5), "multistage (erasing on)": ("multistage", 0.5),
            "multistage (erasing off)": ("multistage", 0.0)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    setups = {}
    for key, (model_name, erase_p) in runs.items():
        cfg = _config(model_name, erase_p, name, img_size, high_res, kwargs)
        torch.manual_seed(0)
        model = build(cfg, classes).train()
        opt = build_optimizer(model.net, cfg.train)
        start_phase(model.net, opt, Phase("all", 1, 1e-4, False), cfg.train, steps_per_epoch=100)
        size = high_res if model_name == "multistage" else img_size
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, size, size, generator=g)
        labels = torch.randint(0, classes, (batch,), generator=g)
        draws = torch.rand(batch, NUM_DRAWS, generator=g)
        setups[key] = (cfg, model, opt, images, labels, draws)

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
    return {"model": name, "img_size": img_size, "high_res": high_res, "batch": batch, "repeats": repeats,
            "threads": torch.get_num_threads(), "steps": stats,
            "ratio_erase_on": stats["multistage (erasing on)"]["median"] / base,
            "ratio_erase_off": stats["multistage (erasing off)"]["median"] / base,
            "images_per_s": {k: batch / v["median"] for k, v in stats.items()}}


def markdown(r: dict) -> str:
    lines = [f"{r['model']}: input {r['img_size']} px, high-res {r['high_res']} px, batch {r['batch']}, "
             f"{r['threads']} threads, {r['repeats']} repeats (seconds per training step)", "",
             "| step | median | min | max | images/s |", "| --- | --- | --- | --- | --- |"]
    for k, v in r["steps"].items():
        lines.append(f"| {k} | {v['median']:.3f} | {v['min']:.3f} | {v['max']:.3f} | {r['images_per_s'][k]:.1f} |")
    lines += ["", f"multistage / baseline: **{r['ratio_erase_on']:.2f}x** with erasing (goal <= 4.5x), "
                  f"**{r['ratio_erase_off']:.2f}x** without (stretch <= 4.0x)"]
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
