"""One command, a few minutes on one GPU: how fast each training step is, how much memory it takes, where the
time goes, and what the paper's whole DAG will cost on this device.

At the paper profile's sizes (params.yaml: ViT-B/16 at 384 px from 448 px views, objects and parts as its
``multistage`` section, batch 16, bf16 autocast, its gradient checkpointing; random weights, no download), on
synthetic JPEGs written to a temporary folder:

- training steps of the baseline, of the multistage model (the paper's recipe) and of its cheapest variant
  (no object crop, the parts found on the full image's map and cut at half the input side), in the frozen and
  the unfrozen phase: seconds per step, images/s, peak CUDA memory, FLOPs per step (the project's own counter,
  as training counts them) and the utilisation they imply against the device's bf16 peak;
- one evaluation batch (``runtime.eval_batch_size``) of the multistage model;
- the training loader (``runtime.augment: device``) feeding baseline steps with 8 and 16 workers: the fraction
  of the step time spent waiting for data;
- the paper DAG's wall time on this one device, extrapolated from these steps over the real datasets' sizes,
  the profile's epochs and every training and evaluation stage (``benchmarks/rehearsal.py``'s stage list).

It writes ``reports/rehearsal-gpu.md``. ``--device cpu --tiny`` runs the same code on a toy ViT in under a
minute on a CPU (the suite runs it): its report says it is a CPU smoke run, and its figures are no GPU's.

    python benchmarks/gpu_check.py                     # on the GPU
    python benchmarks/gpu_check.py --device cpu --tiny # checks the script anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NO_CUDA = "no CUDA device: run with --device cpu --tiny to check the script"
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets, matched against
# torch.cuda.get_device_name in this order (the first key that the name contains)
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.5, "H100": 989.4, "GH200": 989.4,
                    "B200": 2250.0, "A100": 312.0, "L40S": 362.1, "L40": 181.0, "L4": 121.0, "A10G": 70.0,
                    "A10": 125.0, "A30": 165.0, "RTX 6000 Ada": 364.2, "RTX A6000": 154.8}
PAPER = "multistage (paper recipe)"
CHEAPEST = {"object": False, "part_size": None}  # part_size: half the input side, set below
TINY = {"name": "vit_small_patch16_224", "img_size": 32, "high_res": 64,
        "kwargs": {"patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}}


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


# ------------------------------------------------------------------ set-up
def paper_params(tiny: bool) -> dict:
    import yaml

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["model"].update(pretrained=False, weights=None)
    if tiny:
        data["model"].update(name=TINY["name"], img_size=TINY["img_size"], kwargs=TINY["kwargs"])
        data["datasets"]["cub"]["high_res"] = TINY["high_res"]
        data["runtime"]["eval_batch_size"] = 8
    return data


def run_config(data: dict, model: str, overrides: dict | None = None):
    import copy

    from vitfgvc.config import Params

    data = copy.deepcopy(data)
    data["multistage"].update(overrides or {})
    data["ablation"]["variants"] = {}
    return Params.model_validate(data).run_config("cub", model)


def jpeg_manifest(root: Path, n: int, high_res: int):
    """``n`` photograph-like JPEGs stored as ``prepare`` stores them (the shorter side ``high_res``, 4:3)."""
    from benchmarks.bench_loader import write_images

    return write_images(root, n, size=(round(high_res * 4 / 3), high_res))


class Steps:
    """One model's training steps as ``vitfgvc.training`` runs them: the batch's views made on the device, the
    forward passes under autocast, the joint loss, backward, the optimiser's step."""

    def __init__(self, cfg, classes: int, device, autocast, grad_checkpointing: bool):
        import torch

        from vitfgvc.multistage import build
        from vitfgvc.optim import build_optimizer

        torch.manual_seed(0)
        self.cfg, self.device, self.autocast = cfg, device, autocast
        self.model = build(cfg, classes, grad_checkpointing=grad_checkpointing).to(device).train()
        self.opt = build_optimizer(self.model.net, cfg.train)
        self.flops: dict = {}

    def phase(self, frozen: bool) -> None:
        from vitfgvc.optim import start_phase
        from vitfgvc.training import Phase

        start_phase(self.model.net, self.opt, Phase("frozen" if frozen else "unfrozen", 1, 1e-4, frozen),
                    self.cfg.train, steps_per_epoch=1000)
        self.frozen = frozen

    def step(self, batch) -> None:
        from vitfgvc.data.on_device import batch_views
        from vitfgvc.training import counting_flops, loss_of

        images, labels, _, _, draws, aug = batch
        x = batch_views(images, aug, self.device)
        labels, draws = labels.to(self.device, non_blocking=True), draws.to(self.device, non_blocking=True)
        key = (self.frozen, tuple(x.shape))
        count = contextlib.nullcontext() if key in self.flops else counting_flops(self.flops, key)
        with count:
            with self.autocast():
                out = self.model(x, draws)
            loss, _ = loss_of(out, labels, self.cfg)
            loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def close(self) -> None:
        del self.model, self.opt


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------ measurements
def time_steps(steps: Steps, batch, device, warmup: int, repeats: int) -> float:
    """Median seconds of a step on one batch already in memory (no loader)."""
    for _ in range(warmup):
        steps.step(batch)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        steps.step(batch)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_models(data: dict, manifest, device, autocast, batch_size: int, warmup: int, repeats: int) -> dict:
    """Per model and phase: seconds per step, images/s, FLOPs per step, peak memory; the evaluation batch."""
    import torch

    from vitfgvc.data.loader import ManifestDataset
    from vitfgvc.predictions import predict

    cfg0 = run_config(data, "baseline")
    ds = ManifestDataset(manifest, "train", cfg0.high_res, train=True, transform=cfg0.transform, seed=0,
                         on_device=True)
    batch = torch.utils.data.default_collate([ds[i] for i in range(batch_size)])
    half = cfg0.backbone.img_size // 2
    models = {"baseline": ("baseline", {}), PAPER: ("multistage", {}),
              "multistage (cheapest: parts only, at half the side)": ("multistage", {**CHEAPEST, "part_size": half})}
    grad_ckpt = data["runtime"]["grad_checkpointing"]
    out = {}
    for name, (model, overrides) in models.items():
        cfg = run_config(data, model, overrides)
        reset_peak(device)
        steps = Steps(cfg, 200, device, autocast, grad_ckpt)
        row = {"model": model, "overrides": overrides}
        for frozen in (True, False):
            steps.phase(frozen)
            seconds = time_steps(steps, batch, device, warmup, repeats)
            phase = "frozen" if frozen else "unfrozen"
            row[phase] = {"s": seconds, "images_s": batch_size / seconds,
                          "flops": steps.flops[(frozen, (batch_size, 3, cfg.high_res, cfg.high_res))]}
        row["peak_mib"] = peak_mib(device)
        if model == "multistage" and not overrides:  # one evaluation batch, as the evaluation stage runs it
            test = ManifestDataset(manifest, "train", cfg.high_res, train=False, transform=cfg.transform,
                                   on_device=True)
            n = min(data["runtime"]["eval_batch_size"], len(test))
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test, range(n)), batch_size=n)
            predict(steps.model, loader, device, autocast)  # warm-up
            sync(device)
            start = time.perf_counter()
            predict(steps.model, loader, device, autocast)
            sync(device)
            out["evaluation"] = {"images": n, "s": time.perf_counter() - start}
            out["evaluation"]["images_s"] = n / out["evaluation"]["s"]
        steps.close()
        out[name] = row
    return out


def measure_loader(data: dict, manifest, device, autocast, batch_size: int, workers: int, steps_n: int) -> dict:
    """Baseline training steps fed by the training loader with ``workers`` workers: the share of waiting."""
    from vitfgvc.data.loader import ManifestDataset
    from vitfgvc.devices import make_loader

    cfg = run_config(data, "baseline")
    ds = ManifestDataset(manifest, "train", cfg.high_res, train=True, transform=cfg.transform, seed=0,
                         on_device=True)
    steps = Steps(cfg, 200, device, autocast, data["runtime"]["grad_checkpointing"])
    steps.phase(False)
    loader = make_loader(ds, batch_size=batch_size, shuffle=False, drop_last=True, workers=workers, device=device)
    it = iter(loader)
    steps.step(next(it))  # the first batch starts the workers: not counted
    waited = 0.0
    sync(device)
    start = time.perf_counter()
    done = 0
    for _ in range(steps_n):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        waited += time.perf_counter() - t0
        steps.step(batch)
        done += 1
    sync(device)
    total = time.perf_counter() - start
    steps.close()
    return {"workers": workers, "steps": done, "s_per_step": total / max(done, 1), "wait": waited / total}


def dag_hours(models: dict) -> tuple[list[dict], float]:
    """Every training and evaluation stage of the paper DAG (params.yaml) on this device, from the measured
    images/s per phase."""
    import yaml

    from benchmarks import rehearsal

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    rows = []
    for stage, dataset, name, variant in rehearsal._runs(base):
        cfg = rehearsal._run_config(base, dataset, "multistage" if variant else name, variant)
        measured = models["baseline" if name == "baseline" else PAPER]
        train_n, test_n = rehearsal._real_split(base, dataset)
        images = (train_n // cfg.train.batch_size) * cfg.train.batch_size  # an epoch drops the last partial batch
        epochs = rehearsal._phase_epochs(cfg)
        hours = sum(n * images / measured["frozen" if phase == "frozen" else "unfrozen"]["images_s"]
                    for phase, n in epochs.items()) / 3600
        rows.append({"stage": stage, "epochs": sum(epochs.values()), "train_images": train_n, "hours": hours,
                     "eval_hours": test_n / models["evaluation"]["images_s"] / 3600})
    return rows, sum(r["hours"] + r["eval_hours"] for r in rows)


# ------------------------------------------------------------------ the report
def report(r: dict) -> str:
    peak = r["peak_tflops"]
    lines = ["# GPU check" + (" (a CPU smoke run of the script: no GPU's figures)" if r["tiny"] else ""), ""]
    if r["tiny"]:
        lines += ["**This is `--device cpu --tiny`: a toy ViT on a CPU, run to check that the script works. None of "
                  "its figures says anything about a GPU.**", ""]
    lines += [f"Written by `{r['command']}` on {r['date']} in {r['seconds']:.0f} s.", "",
              f"- device: **{r['device_name']}**; torch {r['torch']}, CUDA {r['cuda'] or '–'}, Python {r['python']}",
              f"- model: {r['model_name']} at {r['img_size']} px from {r['high_res']} px views, batch {r['batch']}, "
              f"{'bf16 autocast' if r['amp'] else 'float32'}, gradient checkpointing "
              f"{'on' if r['grad_checkpointing'] else 'off'}, random weights",
              f"- bf16 peak of this device: {f'{peak:g} TFLOP/s (datasheet, dense)' if peak else 'unknown'}", "",
              "## Training steps", "",
              "| model | phase | s / step | images/s | GFLOP / step | utilisation | peak memory |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in r["models"].items():
        if name == "evaluation":
            continue
        for phase in ("frozen", "unfrozen"):
            m = row[phase]
            util = f"{100 * m['flops'] / 1e12 / m['s'] / peak:.1f} %" if peak else "unknown"
            mem = f"{row['peak_mib'] / 1024:.1f} GiB" if row["peak_mib"] is not None else "– (CUDA only)"
            lines.append(f"| {name} | {phase} | {m['s']:.3f} | {m['images_s']:.1f} | {m['flops'] / 1e9:,.4g} | {util} "
                         f"| {mem} |")
    ev = r["models"]["evaluation"]
    lines += ["", f"Evaluation: a batch of {ev['images']} test images through the multistage model in "
                  f"{ev['s']:.3f} s ({ev['images_s']:.1f} images/s).", "",
              "## The loader feeding the baseline", "",
              "`runtime.augment: device`: the workers decode, crop and draw; the flip, rotation, zoom, warp and "
              "lighting run batched on the device inside the step.", "",
              "| workers | steps | s / step | waiting for data |", "| ---: | ---: | ---: | ---: |"]
    for row in r["loader"]:
        lines.append(f"| {row['workers']} | {row['steps']} | {row['s_per_step']:.3f} | {100 * row['wait']:.1f} % |")
    rows, total = r["dag"]
    train_h, eval_h = sum(x["hours"] for x in rows), sum(x["eval_hours"] for x in rows)
    lines += ["", "## The paper DAG on this device", "",
              f"Every training of the paper profile (params.yaml: {len(rows)} stages) at the images/s measured "
              "above (the baseline's for baselines, the paper recipe's for the multistage model and every ablation: "
              "an upper bound for the cheaper variants), over the real datasets' training images and the profile's "
              "epochs per phase, plus each evaluation at the evaluation's images/s; downloads, prepare, figures and "
              "tables left out. Every dataset's views cost the same model compute (the model input is 384 px "
              "whatever the view), so the larger views of Cars (512) and FGVC-Aircraft (786) cost only their "
              "loading.", "",
              "| stage | epochs | training images | hours | evaluation hours |", "| --- | ---: | ---: | ---: | ---: |"]
    for x in rows:
        lines.append(f"| {x['stage']} | {x['epochs']} | {x['train_images']:,} | {x['hours']:.2f} | "
                     f"{x['eval_hours']:.3f} |")
    lines += ["", f"**Total: {total:.1f} hours** on this one device ({train_h:.1f} training, {eval_h:.2f} evaluation)"
              + (", of the toy model: not the paper's cost." if r["tiny"] else ".")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="a toy ViT and few steps: checks the script in a minute")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="loader workers to try (default 8 16)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/rehearsal-gpu.md")
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = torch.device(args.device)
    data = paper_params(args.tiny)
    batch = data["train"]["batch_size"] if not args.tiny else 4
    warmup, repeats, loader_steps = (1, 2, 4) if args.tiny else (3, 10, 30)
    workers = args.workers or ([1, 2] if args.tiny else [8, 16])
    from vitfgvc.devices import autocast_for

    autocast = autocast_for(device, data["train"]["amp"])
    cfg = run_config(data, "baseline")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        manifest = jpeg_manifest(Path(tmp), batch * (loader_steps + 2), cfg.high_res)
        print(f"gpu_check: {len(manifest.table)} JPEGs written; timing the models", flush=True)
        models = measure_models(data, manifest, device, autocast, batch, warmup, repeats)
        loader = []
        for w in workers:
            print(f"gpu_check: the loader with {w} workers", flush=True)
            loader.append(measure_loader(data, manifest, device, autocast, batch, w, loader_steps))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    r = {"tiny": args.tiny, "command": " ".join(["python benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
         "date": f"{datetime.now(timezone.utc):%Y-%m-%d}", "device_name": name, "torch": torch.__version__,
         "cuda": torch.version.cuda if device.type == "cuda" else None, "python": platform.python_version(),
         "model_name": cfg.backbone.name, "img_size": cfg.backbone.img_size, "high_res": cfg.high_res,
         "batch": batch, "amp": data["train"]["amp"] and device.type == "cuda",
         "grad_checkpointing": data["runtime"]["grad_checkpointing"],
         "peak_tflops": bf16_peak(name) if device.type == "cuda" else None, "models": models, "loader": loader}
    r["dag"] = dag_hours(models)
    r["seconds"] = time.perf_counter() - started
    text = report(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"gpu_check: wrote {args.out} ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
