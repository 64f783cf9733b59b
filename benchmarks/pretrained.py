"""``reports/cpu/pretrained.md``: the CPU profile's seed study asked again with a pretrained encoder.

Written by ``python benchmarks/profiles.py pretrained --seeds 3 --seed-variants parts_small`` once every
seed's copy has finished. Three parts:

- the combined test accuracy per run and the paired differences under :mod:`benchmarks.seeds`' rule,
  from scratch (read from ``reports/cpu/seeds.md``, the from-scratch study's own report: its per-seed
  figures, the differences recomputed from them) beside pretrained (each copy's metrics);
- the mechanism: the multistage model's object box against the true digit box on the validation split
  (mean IoU, recall = share covering at least half the true box) before the first step, after epoch 1
  and at the last epoch, pretrained (every seed) against from scratch (the profile's ``scratch`` variant,
  the same run with ``model.weights: null``, seed 0);
- the pretraining's cost (images, classes, epochs, seconds, FLOPs), apart: every run compared starts from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from benchmarks import seeds as S

REPORT = "reports/cpu/pretrained.md"
SCRATCH_SEEDS = "reports/cpu/seeds.md"
DATASET = "digits"


def scratch_rows(path: Path, dataset: str = DATASET) -> tuple[list[int], dict[str, tuple[float, ...]]]:
    """From a seeds.md: its seeds and each run's combined test accuracy per seed (``{"multistage": (...)}``)."""
    text = path.read_text()
    section = text.split(f"## {dataset}", 1)
    if len(section) < 2:
        raise S.SeedsError(f"{path}: no '## {dataset}' section")
    header = re.search(r"^\| run \| accuracy \| (.+) \| mean ± std \|$", section[1], re.MULTILINE)
    if header is None:
        raise S.SeedsError(f"{path}: no per-seed accuracy table under '## {dataset}'")
    seeds = [int(c.removeprefix("seed ")) for c in header.group(1).split(" | ")]
    out = {}
    for line in section[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(seeds) + 3 and cells[0] and cells[1] == "combined":
            key = f"ablation/{cells[0].removeprefix('variant ')}" if cells[0].startswith("variant ") else cells[0]
            out[key] = tuple(float(v) for v in cells[2:2 + len(seeds)])
    if not out:
        raise S.SeedsError(f"{path}: no 'combined' rows under '## {dataset}'")
    return seeds, out


def _paired(acc: Mapping[str, tuple[float, ...]]) -> dict[str, S.Difference]:
    rows = [S.Row(run, {"accuracy": S.Stat(v)}, S.Stat(v), ()) for run, v in acc.items()]
    return {d.name: d for d in S.differences(rows)}


def _cell(d: S.Difference | None) -> str:
    if d is None:
        return "—"
    lo, hi = d.interval or (float("nan"), float("nan"))
    return f"{S._pm(d.stat, sign=True)} [{lo:+.2f}, {hi:+.2f}]: {d.verdict}"


def mechanism(copy: Path, run: str) -> dict[str, dict[str, float | None]]:
    """The object box's validation IoU and recall of one run: before training, after epoch 1, at the end."""
    summary = json.loads((copy / "models" / DATASET / run / "training.json").read_text())
    history = pd.read_csv(copy / "metrics" / DATASET / f"{run}_history.csv")
    before = summary.get("val_before_training") or {}
    first, last = history.iloc[0], history.iloc[-1]

    def pick(src) -> dict[str, float | None]:
        return {k: (float(src[f"val_{k}"]) if f"val_{k}" in src and pd.notna(src[f"val_{k}"]) else None)
                for k in ("box_iou", "box_recall", "accuracy")}

    return {"before": pick(before), "epoch 1": pick(first), f"epoch {len(history)}": pick(last)}


def _fmt(v: float | None, pct: bool = False) -> str:
    return "—" if v is None else (f"{v:.1f}" if pct else f"{v:.3f}")


def report(copies: Mapping[int, Path], params: dict, variants: Sequence[str], per_seed: Mapping[int, Mapping],
           *, command: str, scratch_seeds: Path) -> str:
    seeds = sorted(copies)
    rows = S.aggregate(per_seed, DATASET, S.runs(params, DATASET, variants))
    pretrained = {r.run: r.accuracy["accuracy"].values for r in rows}
    scratch_list, scratch = scratch_rows(scratch_seeds)
    d_scratch, d_pre = _paired(scratch), _paired(pretrained)
    out = ["# Does the method pay when the attention is pretrained? (CPU profile, 3 seeds)", "",
           f"Command: `{command}`", "",
           (f"Pretrained: `params-pretrained.yaml`, seeds {', '.join(map(str, seeds))}: params-cpu.yaml with the "
           "encoder started from `pretrain@fractals` (docs/method.md). From scratch: "
           f"`{SCRATCH_SEEDS}` (seeds {', '.join(map(str, scratch_list))}), its per-seed figures read from it."), "",
           "Hardware: " + "; ".join(S._hardware(per_seed)), "",
           (f"**Rule** (as {SCRATCH_SEEDS}): a difference is claimed only when its paired 95 % Student-t interval "
           "excludes zero."), "", "## Test accuracy (combined, %)", "",
           "| run | from scratch: per seed | mean ± std | pretrained: per seed | mean ± std |", "|---|---|---|---|---|"]
    for run, values in pretrained.items():
        sv = scratch.get(run)
        out.append(f"| {S._label(run)} | {', '.join(f'{v:.1f}' for v in sv) if sv else '—'} | "
                   f"{S._pm(S.Stat(sv)) if sv else '—'} | {', '.join(f'{v:.1f}' for v in values)} | "
                   f"{S._pm(S.Stat(values))} |")
    out += ["", "## Paired differences (points): mean ± std [95 % interval]: verdict", "",
            "| difference | from scratch | pretrained |", "|---|---|---|"]
    for name in dict.fromkeys([*d_pre, *d_scratch]):
        out.append(f"| {name} | {_cell(d_scratch.get(name))} | {_cell(d_pre.get(name))} |")
    out += ["", "Training seconds per seed (fine-tuning only; the pretraining is below):", "",
            "| run | epochs | train s per seed |", "|---|---|---|"]
    for r in rows:
        out.append(f"| {r.label} | {'/'.join(map(str, r.epochs))} | {', '.join(f'{v:.0f}' for v in r.train_seconds.values)} |")
    out += ["", "## The mechanism: the object box against the true digit box (validation split)", "",
            ("The multistage model's object box (attention rollout, the profile's localisation) on the 300 validation "
            "canvases: mean IoU and recall (share of boxes covering at least half the digit), before the first "
            "step, after epoch 1 and at the end. From scratch: the `scratch` variant (model.weights: null) of the "
            f"seed-{seeds[0]} copy."), "",
            "| encoder | seed | when | box IoU | box recall | val accuracy (%) |", "|---|---|---|---|---|---|"]
    measured = [("pretrained", s, copies[s], "multistage") for s in seeds]
    if (copies[seeds[0]] / "models" / DATASET / "ablation/scratch" / "training.json").exists():
        measured.append(("from scratch", seeds[0], copies[seeds[0]], "ablation/scratch"))
    for label, s, copy, run in measured:
        for when, m in mechanism(copy, run).items():
            out.append(f"| {label} | {s} | {when} | {_fmt(m['box_iou'])} | {_fmt(m['box_recall'])} | "
                       f"{_fmt(m['accuracy'], pct=True)} |")
    out += ["", ("## The pretraining's cost (shared by every run of a seed: the equal-time comparison is between "
            "fine-tunings)"), "", "| seed | source | classes | train images | epochs | seconds | FLOPs | val accuracy (%) |",
            "|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        for source in params["pipeline"].get("pretrain", []):
            r = json.loads((copies[s] / "metrics/pretrain" / f"{source}.json").read_text())
            out.append(f"| {s} | {source} | {r['classes']} | {r['train_images']} | {r['epochs']} | "
                       f"{r['train_seconds']:.0f} | {r['train_flops']:.2e} | {_fmt(r['final_val_accuracy'], True)} |")
    return "\n".join(out) + "\n"
