"""The paper profile rehearsed at full size, and what the real run will cost.

``python benchmarks/profiles.py rehearsal`` runs the paper's DAG (``params.yaml``: all
five datasets, both models, every ablation, the evaluations, figures and tables)
unchanged but for what this module's :func:`derive_params` sets:

- each dataset read from local archives in its exact original format, with images at
  the real datasets' sizes (``python -m tests.fixtures --realistic``);
- ``model.pretrained: false`` (the architecture and input size stay the paper's);
- ``runtime.limit_steps`` optimiser steps per phase and ``runtime.limit_eval`` test
  images (runtime keys: no stage declares them, and the outputs say they were limited);
- on a CPU, each optimiser batch is cut to ``micro_batch`` images (``train.batch_size``;
  the paper's batches take minutes per step on two cores). On a GPU the batches and
  ``runtime.accum_steps`` stay the paper's.

It times every stage (``dvc repro -s``, one at a time, in DAG order), then :func:`report`
reads what the stages measured (seconds per optimiser step per phase, images per second,
peak memory) and extrapolates the full run from the real datasets' sizes (the dataset
registry's image counts) and the profile's epochs and batches. A step is the optimiser's
update (timed apart, per step) plus the forward-backward passes, which on a CPU cost the
same per image at any batch: a CPU's figures scale from its micro-batch to the paper's
batch. On a GPU the measured step is the paper's.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pandas as pd

from vitfgvc.config import Params
from vitfgvc.data.registry import spec
from vitfgvc.inference import TRAINING_SUMMARY, read_training, training_record
from vitfgvc.report.tables import describe_hardware

GIB = 2**30


def derive_params(base: dict, *, steps: int, eval_images: int, micro_batch: int | None, workers: int) -> dict:
    """The rehearsal's params: ``base`` (the paper's) with the overrides above, nothing else changed."""
    p = copy.deepcopy(base)
    for name in p["pipeline"]["datasets"]:
        entry = p["datasets"][name]
        entry.update(path=f"data/fixtures/{name}", urls=[], kaggle=None)
        if micro_batch:
            entry["train"] = {**entry.get("train", {}), "batch_size": micro_batch}
    if micro_batch:
        p["train"]["batch_size"] = micro_batch
    p["model"].update(pretrained=False, weights=None)
    p["report"]["dir"] = "reports/rehearsal-run"   # the rehearsal's own tables and figures, inside its copy
    rt = p["runtime"]
    rt.update(limit_steps=steps, limit_eval=eval_images, workers=workers, prepare_workers=max(1, min(workers, 2)),
              eval_batch_size=min(rt["eval_batch_size"], eval_images), ckpt_every=0)
    if micro_batch:
        rt["accum_steps"] = 1
    return p


# ------------------------------------------------------------------ the report
def _real_split(base: dict, dataset: str) -> tuple[int, int]:
    """(train, test) images of the real dataset under the profile's split settings."""
    s, entry = spec(dataset), base["datasets"][dataset]
    test = s.test_images or round(s.images * entry["test_fraction"])
    train = s.images - test
    return round(train * (1 - entry["val_fraction"])), test


def _run_config(base: dict, dataset: str, model: str, variant: str | None = None):
    return Params.model_validate(base).run_config(dataset, model, variant)


def _runs(base: dict) -> list[tuple[str, str, str, str | None]]:
    """(stage, dataset, model-dir name, variant) of every training the paper DAG runs."""
    runs = []
    for d in base["pipeline"]["datasets"]:
        runs += [(f"baseline@{d}", d, "baseline", None), (f"multistage@{d}", d, "multistage", None)]
    for d in base["ablation"]["datasets"]:
        runs += [(f"ablate@{d}-{v}", d, f"ablation/{v}", v) for v in base["ablation"]["variants"]]
    return runs


def _phase_epochs(cfg) -> dict[str, int]:
    t = cfg.train
    return {k: v for k, v in (("frozen", t.epochs_frozen), ("unfrozen", t.epochs), ("final", t.epochs_final)) if v}


def training_rows(project: Path, base: dict) -> list[dict]:
    """Per training stage: what it measured and the full run's extrapolated hours."""
    rows = []
    for stage, dataset, name, variant in _runs(base):
        history_path = project / "metrics" / dataset / f"{name.replace('/', os.sep)}_history.csv"
        if not (project / "models" / dataset / name / TRAINING_SUMMARY).exists():
            continue
        summary = read_training(project / "models" / dataset / name, training_record(history_path))
        history = pd.read_csv(history_path)
        cfg = _run_config(base, dataset, "multistage" if variant else name, variant)
        batch = cfg.train.batch_size                     # the paper's optimiser batch
        measured_batch = summary["batch_size"]           # the rehearsal's
        train_n, _ = _real_split(base, dataset)
        steps_per_epoch = train_n // batch
        hours, per_phase = 0.0, {}
        for phase, epochs in _phase_epochs(cfg).items():
            h = history[history["phase"] == phase]
            if h.empty:
                continue
            # a step = the optimiser's update (per step) + forward-backward passes (per image); the wait for the
            # loader is left out (its first batch includes starting the workers)
            waited = h["data_seconds"].sum() if "data_seconds" in h else 0.0
            optimizing = h["optimizer_seconds"].sum() if "optimizer_seconds" in h else 0.0
            per_image = float((h["seconds"].sum() - waited - optimizing) / (h["steps"].sum() * measured_batch))
            per_phase[phase] = optimizing / h["steps"].sum() + per_image * batch  # s per step at the paper's batch
            hours += per_phase[phase] * steps_per_epoch * epochs / 3600
        rows.append({"stage": stage, "input": f"{cfg.backbone.img_size} px (views {cfg.high_res} px)",
                     "batch": batch, "measured_batch": measured_batch, "micro_batch": summary["micro_batch"],
                     "step_s": per_phase, "images_per_s": float(history["images_per_s"].median()),
                     "peak_mib": summary["peak_memory_mib"], "memory": summary["memory"],
                     "steps": steps_per_epoch * sum(_phase_epochs(cfg).values()), "hours": hours,
                     "parameters": summary.get("parameters"), "hardware": summary.get("hardware")})
    return rows


def evaluation_rows(project: Path, base: dict) -> list[dict]:
    rows = []
    for stage, dataset, name, _variant in _runs(base):
        path = project / "metrics" / dataset / f"{name.replace('/', os.sep)}.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        _, test_n = _real_split(base, dataset)
        rows.append({"stage": f"evaluate of {stage}", "images_per_s": m["eval_images_per_s"],
                     "peak_mib": m["eval_peak_memory_mib"], "images": test_n,
                     "hours": test_n / max(m["eval_images_per_s"], 1e-9) / 3600})
    return rows


def activation_estimate(row: dict) -> float | None:
    """GiB a GPU needs for this stage at the paper's batch, from a CPU run's peak RSS (an upper bound:
    activations counted in fp32, where bf16 autocast keeps many in half the bytes)."""
    if row["memory"] != "process peak RSS" or not row.get("parameters"):
        return None
    params = row["parameters"]
    static = params * 4 * 5          # fp32 weights, gradients, RAdam's two moments, Lookahead's slow weights
    runtime = 1.0 * GIB              # the interpreter, torch and the loaders' share (measured peak includes it)
    per_image = max(row["peak_mib"] * 2**20 - static - runtime, 0) / row["micro_batch"]
    paper_micro = row["batch"]      # the paper profile's runtime.accum_steps is 1
    return (static + per_image * paper_micro) / GIB


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def report(project: Path, base: dict, derived: dict, stage_seconds: dict[str, float], *, command: str) -> str:
    """``reports/rehearsal.md``: per stage what it measured and the full run's cost on this device."""
    train, evals = training_rows(project, base), evaluation_rows(project, base)
    devices = "; ".join(sorted({describe_hardware(r["hardware"]) for r in train if r["hardware"]})) or "?"
    rt = derived["runtime"]
    total_train = sum(r["hours"] for r in train)
    total_eval = sum(r["hours"] for r in evals)
    prepare = {}
    for d in base["pipeline"]["datasets"]:
        m = project / "metrics" / "prepare" / f"{d}.json"
        if m.exists() and f"prepare@{d}" in stage_seconds:
            done = json.loads(m.read_text())["images"]
            prepare[d] = stage_seconds[f"prepare@{d}"] / max(done, 1) * spec(d).images / 3600
    total_prepare = sum(prepare.values())
    lines = [
        "# Rehearsal of the paper profile", "",
        f"Measured on: **{devices}**.  ",
        f"Command: `{command}` ({sum(stage_seconds.values()) / 60:.1f} min for {len(stage_seconds)} stages).", "",
        "The paper's DAG ran unchanged (ViT-B/16 at 384 px, random weights) on archives in the datasets' original "
        f"formats at their real image sizes, {_n(rt['limit_steps'], 'optimiser step')} per phase and "
        f"{_n(rt['limit_eval'], 'test image')} per evaluation"
        + (f", each optimiser batch cut to {_n(derived['train']['batch_size'], 'image')} (the figures below are scaled "
           "to the paper's batches: the optimiser's update per step, the forward-backward passes per image; the wait for the "
           "loader is left out)"
           if derived["train"]["batch_size"] != base["train"]["batch_size"] else "")
        + ". Hours extrapolate to the real datasets' sizes (train/test: "
        + ", ".join(f"{d} {'/'.join(str(n) for n in _real_split(base, d))}" for d in base["pipeline"]["datasets"])
        + ") and the profile's epochs.", "",
        "## Training", "",
        "| stage | input | batch | s / step (frozen · unfrozen · final) | images/s | peak memory | steps | hours |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in train:
        steps = " · ".join(f"{r['step_s'][k]:.2f}" if k in r["step_s"] else "–" for k in ("frozen", "unfrozen", "final"))
        lines.append(f"| {r['stage']} | {r['input']} | {r['batch']} | {steps} | {r['images_per_s']:.2f} "
                     f"| {r['peak_mib'] / 1024:.1f} GiB | {r['steps']:,} | {r['hours']:.2f} |")
    lines += ["", f"Peak memory: {train[0]['memory'] if train else '?'} at a micro-batch of "
              f"{_n(train[0]['micro_batch'], 'image') if train else '?'}.", ""]
    estimates = [(r["stage"], activation_estimate(r)) for r in train]
    estimates = [(s, e) for s, e in estimates if e is not None]
    if estimates:
        worst = max(estimates, key=lambda x: x[1])
        lines += [f"Computed GPU memory at the paper's batches (fp32 weights, gradients and optimiser state plus the "
                  f"memory the step added over them, all counted as activations of the micro-batch's images and in fp32: an "
                  f"upper bound, loose at a micro-batch of one and under bf16 autocast): at most "
                  f"**{worst[1]:.1f} GiB** ({worst[0]}); "
                  + ("fits a 40 GB GPU." if worst[1] * GIB <= 40e9 else
                     "**does not fit a 40 GB GPU**: raise `runtime.accum_steps`."), ""]
    lines += ["## Evaluation", "", "| stage | images/s | peak memory | test images | hours |", "|---|---:|---:|---:|---:|"]
    for r in evals:
        lines.append(f"| {r['stage']} | {r['images_per_s']:.2f} | {r['peak_mib'] / 1024:.1f} GiB | {r['images']:,} "
                     f"| {r['hours']:.2f} |")
    lines += ["", "## The full run on this device", "",
              "| part | hours |", "|---|---:|",
              f"| prepare (decode and store {sum(1 for _ in prepare)} datasets) | {total_prepare:.2f} |",
              f"| training ({len(train)} stages) | {total_train:.1f} |",
              f"| evaluation ({len(evals)} stages) | {total_eval:.2f} |",
              f"| **total** (without downloads) | **{total_prepare + total_train + total_eval:.1f}** |", "",
              "Per stage wall time of the rehearsal itself (seconds, process start included):", "",
              "| stage | s |", "|---|---:|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in stage_seconds.items()]
    return "\n".join(lines) + "\n"


def hours_total(text: str) -> float:
    """The total the report states (for tests)."""
    line = next(ln for ln in text.splitlines() if ln.startswith("| **total**"))
    return float(line.rsplit("**", 2)[1])


