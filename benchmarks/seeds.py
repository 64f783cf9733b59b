"""The CPU profile over several seeds: which differences stand out from the seed-to-seed spread.

``python benchmarks/profiles.py cpu --seeds N [--seed-variants NAME ...]`` runs the profile as
usual (its own ``seed``, in ``.profiles/cpu``), then the same profile with ``seed`` + 1 ...
``seed`` + N - 1, each in its own copy ``.profiles/cpu-seed<s>`` (:func:`derive_params`: only
the seed changes, and the ablation variants shrink to the ones named), and writes
``reports/cpu/seeds.md`` (:func:`report`): the key rows' test accuracy per seed and their mean
and sample std, and the paired differences with a verdict (:func:`verdict`).

The seed draws the synthetic canvases, the split, the initialisation and every augmentation,
so the spread here is everything a seed moves; all seeds run on the machine that runs the
command (the report says so if their metrics name several).

Everything here is pure (no DVC): :mod:`benchmarks.profiles` runs the copies.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("cpu", "pretrained")  # the profiles with a seed study: the others are rehearsals, not results
MIN_SEEDS = 3            # fewer seeds never claim a difference
CONFIDENCE = 0.95
PERCENT = f"{CONFIDENCE * 100:g} %"
ACCURACIES = {"accuracy": "combined", "accuracy_a": "a (image)", "accuracy_b": "b (object)",
              "accuracy_c": "c (parts)"}
CLAIMED = "exceeds the spread"
NOT_CLAIMED = "within the spread: not claimed"


class SeedsError(ValueError):
    """A seed study that cannot run as asked; the message names what is wrong."""


def check_request(profile: str, params: dict, seeds: int | None, variants: Sequence[str]) -> None:
    """Refuse ``--seeds``/``--seed-variants`` on another profile than ``cpu``, fewer than 2 seeds,
    variants without ``--seeds``, and variant names that ``params``' ``ablation.variants`` lacks."""
    if profile not in PROFILES:
        raise SeedsError(f"--seeds and --seed-variants are for the {' and '.join(PROFILES)} profiles only, not {profile!r} "
                         "(its figures check that the pipeline runs; they are not results)")
    if seeds is None:
        raise SeedsError("--seed-variants needs --seeds N (the number of seeds)")
    if seeds < 2:
        raise SeedsError(f"--seeds must be at least 2 (1 is the plain profile run), got {seeds}")
    known = list(params.get("ablation", {}).get("variants", {}))
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise SeedsError(f"--seed-variants: no variant {', '.join(map(repr, unknown))} in the {profile} profile's "
                         f"ablation.variants ({', '.join(known) or 'none'})")
    if len(set(variants)) != len(variants):
        raise SeedsError(f"--seed-variants names a variant twice: {' '.join(variants)}")


def seed_values(params: dict, n: int) -> list[int]:
    """The profile's own seed and the next ``n - 1``."""
    first = int(params.get("seed", 0))
    return [first + i for i in range(n)]


def seed_dir(dest: Path, seed: int) -> Path:
    """Where a further seed's copy lives: beside the profile's own (``.profiles/cpu-seed1``)."""
    return dest.with_name(f"{dest.name}-seed{seed}")


def derive_params(base: dict, seed: int, variants: Sequence[str]) -> dict:
    """``base`` with ``seed`` and only the ablation ``variants`` named (none: no dataset ablated)."""
    p = copy.deepcopy(base)
    p["seed"] = seed
    ablation = p.setdefault("ablation", {})
    every = ablation.get("variants") or {}
    ablation["variants"] = {v: every[v] for v in variants}
    if not variants:
        ablation["datasets"] = []  # a dataset listed with no variant ablates nothing; [] says so
    return p


def runs(params: dict, dataset: str, variants: Sequence[str]) -> list[str]:
    """The key rows of ``dataset``: ``baseline``, ``baseline_equal_time`` (where the profile runs it),
    ``multistage`` and ``ablation/<variant>`` (where the profile ablates the dataset)."""
    pipeline, ablation = params["pipeline"], params.get("ablation", {})
    out = ["baseline", *(["baseline_equal_time"] if dataset in pipeline.get("equal_time", []) else []), "multistage"]
    if dataset in ablation.get("datasets", []):
        out += [f"ablation/{v}" for v in variants]
    return out


def read_seed(project: Path, params: dict, variants: Sequence[str]) -> dict[str, dict]:
    """One copy's metrics: ``{"digits/baseline": {...}, "digits/ablation/small": {...}}``."""
    out = {}
    for dataset in params["pipeline"]["datasets"]:
        for run in runs(params, dataset, variants):
            path = project / "metrics" / dataset / f"{run}.json"
            if not path.exists():
                raise SeedsError(f"{path} is missing: did the pipeline in {project} finish?")
            out[f"{dataset}/{run}"] = json.loads(path.read_text())
    return out


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stat:
    """One figure over the seeds, in seed order."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample std (ddof = 1); None with one seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class Row:
    """A run over the seeds: each accuracy that every seed reports, and its training cost."""

    run: str                       # baseline, baseline_equal_time, multistage, ablation/<variant>
    accuracy: dict[str, Stat]      # a key of ACCURACIES -> its figures
    train_seconds: Stat
    epochs: tuple[int, ...]
    train_flops: Stat | None = None

    @property
    def label(self) -> str:
        return f"variant {self.run.split('/', 1)[1]}" if self.run.startswith("ablation/") else self.run


def t_critical(n: int, confidence: float = CONFIDENCE) -> float:
    """Student's t quantile for a two-sided ``confidence`` interval of a mean of ``n`` values."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, n - 1))


@dataclass(frozen=True)
class Difference:
    """``a - b`` per seed (paired: the same seed's data, split and initialisation)."""

    a: str
    b: str
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"{_label(self.a)} − {_label(self.b)}"

    @property
    def stat(self) -> Stat:
        return Stat(self.values)

    @property
    def interval(self) -> tuple[float, float] | None:
        """The paired 95 % t-interval of the mean difference; None with fewer than 2 seeds."""
        n, s = len(self.values), self.stat.std
        if s is None:
            return None
        half = t_critical(n) * s / math.sqrt(n)
        return self.stat.mean - half, self.stat.mean + half

    @property
    def verdict(self) -> str:
        return verdict(self.values)


def verdict(diffs: Sequence[float], min_seeds: int = MIN_SEEDS) -> str:
    """:data:`CLAIMED` when there are at least ``min_seeds`` paired differences and their 95 % Student-t
    interval, mean ± t(0.975, N-1) · std / √N, excludes zero; else :data:`NOT_CLAIMED`."""
    n = len(diffs)
    if n < max(min_seeds, 2):
        return NOT_CLAIMED
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    return CLAIMED if abs(mean) > t_critical(n) * std / math.sqrt(n) else NOT_CLAIMED


def _label(run: str) -> str:
    return run.split("/", 1)[1] if run.startswith("ablation/") else run


def _number(m: dict, key: str) -> float | None:
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def aggregate(per_seed: Mapping[int, Mapping[str, dict]], dataset: str, run_names: Sequence[str]) -> list[Row]:
    """``per_seed``: seed -> :func:`read_seed`'s mapping. A row per run, in ``run_names``' order, each figure
    in seed order; an accuracy is kept where every seed reports it (the baseline has no stages b and c)."""
    seeds = sorted(per_seed)
    rows = []
    for run in run_names:
        key = f"{dataset}/{run}"
        missing = [s for s in seeds if key not in per_seed[s]]
        if missing:
            raise SeedsError(f"no metrics for {key} with seed(s) {', '.join(map(str, missing))}")
        ms = [per_seed[s][key] for s in seeds]
        accuracy = {}
        for k in ACCURACIES:
            values = [_number(m, k) for m in ms]
            if all(v is not None for v in values):
                accuracy[k] = Stat(tuple(values))
        if "accuracy" not in accuracy:
            raise SeedsError(f"{key}: a seed's metrics have no test accuracy")
        flops = [_number(m, "train_flops") for m in ms]
        rows.append(Row(run, accuracy, Stat(tuple(float(m["train_seconds"]) for m in ms)),
                        tuple(int(m["epochs"]) for m in ms),
                        Stat(tuple(flops)) if all(f is not None for f in flops) else None))
    return rows


def differences(rows: Sequence[Row], metric: str = "accuracy") -> list[Difference]:
    """multistage − baseline, multistage − baseline_equal_time, and each variant − baseline_equal_time and
    − multistage (those whose rows are there), on ``metric``, paired by seed."""
    by = {r.run: r for r in rows}
    pairs = [("multistage", "baseline"), ("multistage", "baseline_equal_time")]
    for r in rows:
        if r.run.startswith("ablation/"):
            pairs += [(r.run, "baseline_equal_time"), (r.run, "multistage")]
    out = []
    for a, b in pairs:
        if a in by and b in by and metric in by[a].accuracy and metric in by[b].accuracy:
            va, vb = by[a].accuracy[metric].values, by[b].accuracy[metric].values
            out.append(Difference(a, b, tuple(x - y for x, y in zip(va, vb, strict=True))))
    return out


# ----------------------------------------------------------------------------- report
def _signed(v: float, digits: int) -> str:
    """``+1.50``, ``-0.30``, ``+0.00`` (never ``-0.00`` from a rounding residue)."""
    return f"{round(v, digits) + 0.0:+.{digits}f}"


def _pm(s: Stat, digits: int = 2, sign: bool = False) -> str:
    mean = _signed(s.mean, digits) if sign else f"{s.mean:.{digits}f}"
    return f"{mean} ± {s.std:.{digits}f}" if s.std is not None else f"{mean} ± n/a"


def _hardware(per_seed: Mapping[int, Mapping[str, dict]]) -> list[str]:
    from vitfgvc.report.tables import describe_hardware

    lines = {describe_hardware(m["hardware"]) for runs_ in per_seed.values() for m in runs_.values()
             if m.get("hardware")}
    return sorted(lines) or ["not recorded"]


def render(dataset: str, seeds: Sequence[int], rows: Sequence[Row], diffs: Sequence[Difference]) -> str:
    """The Markdown of one dataset: accuracies per seed, training cost, differences with their verdicts."""
    n = len(seeds)
    head = "| run | accuracy | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |"
    lines = [f"## {dataset}", "", f"Test accuracy (%) per seed, and mean ± sample std (ddof = 1) over the {n} seeds; "
             "combined is the run's reported accuracy, a, b and c its stages (where the run has them).", "",
             head, "|" + "---|" * (n + 3)]
    for r in rows:
        for i, (k, s) in enumerate(r.accuracy.items()):
            lines.append(f"| {r.label if i == 0 else ''} | {ACCURACIES[k]} | "
                         + " | ".join(f"{v:.1f}" for v in s.values) + f" | {_pm(s)} |")
    flops = any(r.train_flops is not None for r in rows)
    lines += ["", "| run | epochs | mean train s | train s per seed |" + (" mean train FLOPs |" if flops else ""),
              "|---|---|---|---|" + ("---|" if flops else "")]
    for r in rows:
        epochs = "/".join(map(str, sorted(set(r.epochs))))
        line = (f"| {r.label} | {epochs} | {r.train_seconds.mean:.0f} | "
                f"{', '.join(f'{v:.0f}' for v in r.train_seconds.values)} |")
        if flops:
            line += f" {r.train_flops.mean:.3g} |" if r.train_flops is not None else " — |"
        lines.append(line)
    lines += ["", f"Differences of the combined test accuracy (points), paired by seed: mean ± sample std of the "
              f"{n} per-seed differences, and the {PERCENT} Student-t interval of the mean.", "",
              f"| difference | per seed | mean ± std | {PERCENT} interval | verdict |", "|---|---|---|---|---|"]
    for d in diffs:
        iv = d.interval
        interval = f"[{_signed(iv[0], 2)}, {_signed(iv[1], 2)}]" if iv else "n/a"
        lines.append(f"| {d.name} | {', '.join(_signed(v, 1) for v in d.values)} | {_pm(d.stat, sign=True)} | "
                     f"{interval} | {d.verdict} |")
    return "\n".join(lines) + "\n"


def report(per_seed: Mapping[int, Mapping[str, dict]], params: dict, variants: Sequence[str], *,
           command: str) -> str:
    """``reports/cpu/seeds.md``: per dataset of ``params`` (the profile), :func:`render` of its key rows."""
    seeds = sorted(per_seed)
    n = len(seeds)
    rule = (f"**Rule.** A difference is claimed (\"{CLAIMED}\") only with at least {MIN_SEEDS} seeds and when its "
            f"paired {PERCENT} Student-t interval, mean ± t({0.5 + CONFIDENCE / 2:g}, N−1) · std / √N, "
            f"excludes zero; otherwise \"{NOT_CLAIMED}\".")
    if n >= 2:
        t = t_critical(n)
        rule += (f" With N = {n}, t = {t:.2f}: the mean difference must exceed {t / math.sqrt(n):.2f} × its std"
                 + (f" (fewer than {MIN_SEEDS} seeds: nothing is claimed)." if n < MIN_SEEDS else "."))
    hardware = _hardware(per_seed)
    out = ["# CPU profile over seeds", "",
           f"Command: `{command}`", "",
           f"Seeds: {', '.join(map(str, seeds))} (the first is the profile's own run, whose tables are "
           "tables.md; each seed draws its own synthetic canvases, split, initialisation and augmentation). "
           f"Variants repeated: {', '.join(variants) or 'none'}.", "",
           "Hardware: " + "; ".join(hardware) + (" (the seeds ran on different machines: their spread includes "
                                                   "the machines')" if len(hardware) > 1 else ""), "",
           rule, ""]
    for dataset in params["pipeline"]["datasets"]:
        rows = aggregate(per_seed, dataset, runs(params, dataset, variants))
        out.append(render(dataset, seeds, rows, differences(rows)))
    return "\n".join(out)
