"""Accuracy against training compute: the "at equal compute" table and figure of one dataset.

Every training's history (``metrics/<dataset>/<run>_history.csv``, one row per epoch) has
its cumulative training FLOPs and seconds (``cum_flops``, ``cum_seconds``) and, on the
epochs where validation ran, ``val_accuracy``; every ``metrics/<dataset>/<run>.json`` has
the training's total ``train_flops`` and ``train_seconds`` and the final test ``accuracy``.
Each model is set beside the baseline given the same training FLOPs: on the test split by
interpolating between the complete baseline trainings (``baseline`` and
``baseline_equal_time``), on the validation split along the baseline's validation curve.
Nothing is extrapolated; older files without these columns or keys show "—".

No torch here: the tables stage's dependencies are its imports.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Params
from ..errors import UserError
from .results import MISSING, Table, configured_runs, title_of

BASELINES = ("baseline", "baseline_equal_time")  # the complete baseline schedules, by training length
RUN_LABELS = {"baseline": "ViT (baseline, full image)",
              "baseline_equal_time": "ViT (baseline, the multistage model's wall-clock time)",
              "multistage": "Ours (multistage)"}
RUN_COLORS = {"baseline": "#1f77b4", "baseline_equal_time": "#17becf", "multistage": "#d62728"}
VARIANT_COLORS = ["#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
TERA = 1e12
LOG_SPREAD = 100.0  # an axis whose largest value is more than this times its smallest is drawn in log scale
COLUMNS = ["Run", "Train TFLOPs", "Train seconds", "Test accuracy (%)", "Baseline test at these FLOPs (%)",
           "Δ test", "Final val accuracy (%)", "Baseline val at these FLOPs (%)", "Δ val"]


# ---------------------------------------------------------------- the runs and their files
def _is_run(key: str) -> bool:
    return key in (*BASELINES, "multistage") or key.startswith("ablation/")


def dataset_runs(params: Params, dataset: str) -> list[str]:
    """The runs ``params`` configures for ``dataset``: ``baseline``, ``multistage``, ``baseline_equal_time``
    (if the dataset is in ``pipeline.equal_time``), ``ablation/<variant>`` (if it is in ``ablation.datasets``)."""
    prefix = f"{dataset}/"
    return [k[len(prefix):] for k in configured_runs(params) if k.startswith(prefix) and _is_run(k[len(prefix):])]


def runs_of(results: dict[str, dict], dataset: str) -> dict[str, dict]:
    """The runs of one dataset in :func:`~vitfgvc.report.results.load_results`' answer, keyed as the histories."""
    prefix = f"{dataset}/"
    return {k[len(prefix):]: r for k, r in results.items() if k.startswith(prefix) and _is_run(k[len(prefix):])}


def history_path(metrics: Path, dataset: str, run: str) -> Path:
    """``metrics/<dataset>/<run>_history.csv`` (a variant's: ``metrics/<dataset>/ablation/<variant>_history.csv``)."""
    return metrics / dataset / f"{run}_history.csv"


def load_histories(metrics: Path, params: Params, dataset: str) -> dict[str, pd.DataFrame]:
    """``{"baseline": DataFrame, ...}``: the histories of ``dataset``'s configured runs that have one."""
    out = {}
    for run in dataset_runs(params, dataset):
        path = history_path(metrics, dataset, run)
        if path.is_file():
            try:
                out[run] = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise UserError(f"{path}: not a readable training history CSV ({exc})") from None
    return out


def ordered(runs) -> list[str]:
    """Run keys in report order: the baselines, the multistage model, then the variants as given."""
    runs = list(dict.fromkeys(runs))
    return [r for r in (*BASELINES, "multistage") if r in runs] + [r for r in runs if r.startswith("ablation/")]


def run_label(run: str) -> str:
    return RUN_LABELS.get(run) or f"ablation: {run.split('/', 1)[1]}"


def run_colors(runs) -> dict[str, str]:
    """One colour per run, the same in every panel: fixed for the baselines and the multistage model, the
    variants in turn."""
    variants = [r for r in ordered(runs) if r.startswith("ablation/")]
    return {**{r: RUN_COLORS[r] for r in ordered(runs) if r in RUN_COLORS},
            **{v: VARIANT_COLORS[i % len(VARIANT_COLORS)] for i, v in enumerate(variants)}}


# ---------------------------------------------------------------- the numbers
def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _cumulative(history: pd.DataFrame, name: str) -> pd.Series | None:
    """``cum_<name>`` of a history, or the running sum of its per-epoch ``<name>``; None when it has neither."""
    if f"cum_{name}" in history:
        return pd.to_numeric(history[f"cum_{name}"], errors="coerce")
    if name in history:
        per_epoch = pd.to_numeric(history[name], errors="coerce")
        return None if per_epoch.isna().any() else per_epoch.cumsum()
    return None


def curve(history: pd.DataFrame | None, name: str = "flops", y: str = "val_accuracy") -> pd.DataFrame:
    """The measured points of ``y`` against cumulative training ``name`` (``flops`` or ``seconds``): columns
    ``x``, ``y``, sorted by ``x``; empty when the history, its column or its validation is missing."""
    empty = pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float)})
    if history is None or y not in history:
        return empty
    x = _cumulative(history, name)
    if x is None:
        return empty
    points = pd.DataFrame({"x": x, "y": pd.to_numeric(history[y], errors="coerce")}).dropna()
    return points.sort_values("x", kind="stable").reset_index(drop=True)


def total(run: dict | None, history: pd.DataFrame | None, name: str) -> float | None:
    """A training's total ``flops`` or ``seconds``: its metrics' ``train_<name>``, else its history's last
    cumulative value; None when neither has it."""
    value = _number((run or {}).get(f"train_{name}"))
    if value is None and history is not None and len(history):
        cum = _cumulative(history, name)
        value = None if cum is None else _number(cum.iloc[-1])
    return value


def final_val(history: pd.DataFrame | None) -> float | None:
    """The validation accuracy at the last validated epoch (validation always runs after the last one)."""
    if history is None or "val_accuracy" not in history:
        return None
    values = pd.to_numeric(history["val_accuracy"], errors="coerce").dropna()
    return _number(values.iloc[-1]) if len(values) else None


def interpolate(points, x: float | None) -> float | None:
    """Linear interpolation of ``points`` (``(x, y)`` pairs) at ``x``: exactly at a point, that point's ``y``;
    outside their range (or with no points), None: never extrapolated. Points at the same ``x`` are averaged."""
    if x is None:
        return None
    pts = pd.DataFrame(list(points), columns=["x", "y"], dtype=float).dropna()
    if pts.empty:
        return None
    pts = pts.groupby("x", sort=True)["y"].mean()
    xs, ys = pts.index.to_numpy(), pts.to_numpy()
    if x < xs[0] or x > xs[-1]:
        return None
    exact = np.flatnonzero(xs == x)
    if exact.size:
        return float(ys[exact[0]])
    return float(np.interp(x, xs, ys))


def baseline_test_points(dataset: str, results: dict) -> list[tuple[float, float]]:
    """``(train_flops, test accuracy)`` of every complete baseline training that has both."""
    points = []
    for run in BASELINES:
        r = results.get(f"{dataset}/{run}") or {}
        flops, acc = _number(r.get("train_flops")), _number(r.get("accuracy"))
        if flops is not None and acc is not None:
            points.append((flops, acc))
    return points


def baseline_val_curve(histories: dict[str, pd.DataFrame]) -> tuple[str | None, pd.DataFrame]:
    """The baseline's validation curve against cumulative FLOPs: the equal-time baseline's where it has one (it
    runs longest), else the baseline's; ``(run, points)``, ``(None, empty)`` when neither has one."""
    for run in reversed(BASELINES):
        points = curve(histories.get(run))
        if len(points):
            return run, points
    return None, curve(None)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _delta(ours: float | None, base: float | None) -> float | None:
    return None if ours is None or base is None else round(ours - base, 2)


def _tflop_digits(values: list[float | None]) -> int:
    """Decimals that show the smallest positive TFLOP count with three significant digits (at least 2)."""
    positive = [v for v in values if v]
    return 2 if not positive else min(6, max(2, 2 - math.floor(math.log10(min(positive)))))


def equal_compute_table(dataset: str, results: dict, histories: dict[str, pd.DataFrame]) -> Table:
    """Each run of ``dataset`` beside the baseline given the same training FLOPs.

    ``results``: :func:`~vitfgvc.report.results.load_results`' answer (``"<dataset>/<run>"`` keys);
    ``histories``: that dataset's histories, run -> DataFrame (:func:`load_histories`).
    """
    runs = ["baseline", "multistage", *runs_of(results, dataset), *histories]
    test_points = baseline_test_points(dataset, results)
    val_run, val_points = baseline_val_curve(histories)
    val_curve = list(zip(val_points["x"], val_points["y"]))
    rows = []
    for run in ordered(runs):
        r, h = results.get(f"{dataset}/{run}"), histories.get(run)
        flops, seconds = total(r, h, "flops"), total(r, h, "seconds")
        test = _number((r or {}).get("accuracy"))
        base_test = _round(interpolate(test_points, flops))
        val = final_val(h)
        base_val = _round(interpolate(val_curve, flops))
        rows.append([run_label(run), None if flops is None else float(f"{flops / TERA:.6g}"), _round(seconds, 1),
                     test, base_test, _delta(test, base_test), _round(val), base_val, _delta(val, base_val)])
    curve_of = {"baseline_equal_time": "the equal-time baseline's", "baseline": "the baseline's"}.get(val_run)
    notes = [
        "Train TFLOPs: the training's FLOPs (10^12) of matrix products, convolutions and attention, forward and "
        "backward, as counted by torch.utils.flop_counter.FlopCounterMode once per distinct input shape; "
        "element-wise operations, data loading and the optimiser step are not counted. Train seconds: the "
        "training's wall-clock time, validation excluded.",
        "Test accuracy: the combined prediction on the test split at the final epoch. Baseline test at these "
        "FLOPs: linear interpolation in training FLOPs between the complete baseline trainings (the baseline and "
        "the baseline given the multistage model's time, each at its final epoch); exactly a baseline's budget "
        "gives that baseline's accuracy. Accuracy usually rises ever more slowly with training, so the straight "
        "line between two budgets runs under the baseline's own curve: a lower bound for the baseline, and a "
        "positive Δ test an upper bound of the model's advantage. Δ test = test accuracy minus it: positive "
        "where the model beats the baseline at equal compute.",
        "Final val accuracy: the combined prediction on the validation split after the last epoch. Baseline val "
        "at these FLOPs: linear interpolation of "
        + (f"{curve_of} validation curve" if curve_of else "a baseline's validation curve (none was measured here)")
        + " against cumulative training FLOPs. A point inside that longer schedule has not annealed its learning "
        "rate yet, so it is a lower bound for a baseline scheduled to end there. Δ val = final val accuracy "
        "minus it.",
        f"{MISSING} : not measured (a run not in this profile or not evaluated yet, metrics written before FLOPs "
        "were counted, a dataset without a validation split), or outside the range of FLOPs the baseline "
        "measured: a baseline accuracy is interpolated, never extrapolated.",
    ]
    digits = {"Train TFLOPs": _tflop_digits([row[1] for row in rows]), "Train seconds": 1}
    return Table(f"compute_{dataset}", f"{title_of(dataset)} at equal compute: each model beside the baseline "
                 "given the same training FLOPs", COLUMNS, rows, notes=notes, digits=digits)


# ---------------------------------------------------------------- the figure
def compute_figure(dataset_title: str, histories: dict[str, pd.DataFrame], results: dict[str, dict]):
    """Accuracy against training FLOPs (left) and training seconds (right), one colour per run: its
    validation curve (a marker on every validated epoch) and its final test accuracy (a star at its total).

    ``histories`` and ``results`` are one dataset's, keyed by run (``baseline``, ``ablation/<variant>``;
    :func:`load_histories` and :func:`runs_of`). Returns a :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    runs = ordered([*results, *histories])
    colors = run_colors(runs)
    fig = Figure(figsize=(12, 5.4), layout="constrained")
    axes = fig.subplots(1, 2)
    handles, drew = [], {"curve": False, "test": False}
    panels = [("flops", TERA, "training compute (TFLOPs, forward + backward)", "against training FLOPs", "FLOPs"),
              ("seconds", 1.0, "training time (s, validation excluded)", "against training time", "seconds")]
    for ax, (name, unit, xlabel, title, what) in zip(axes, panels):
        xs = []
        for run in runs:
            h, r = histories.get(run), results.get(run)
            points = curve(h, name)
            if len(points):
                ax.plot(points["x"] / unit, points["y"], "-o", color=colors[run], markersize=3.5, linewidth=1.4)
                xs += list(points["x"] / unit)
                drew["curve"] = True
            end, test = total(r, h, name), _number((r or {}).get("accuracy"))
            if end is not None and test is not None:
                ax.plot([end / unit], [test], linestyle="none", marker="*", markersize=15, color=colors[run],
                        markeredgecolor="black", markeredgewidth=0.7, zorder=5)
                xs.append(end / unit)
                drew["test"] = True
        positive = [x for x in xs if x > 0]
        if positive and max(positive) > LOG_SPREAD * min(positive):
            ax.set_xscale("log")
        if not xs:
            ax.text(0.5, 0.5, f"not measured (no training {what} in these metrics)", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(y=0.08)
    for run in runs:
        handles.append(Line2D([], [], color=colors[run], marker="o", markersize=5, label=run_label(run)))
    if drew["curve"]:
        handles.append(Line2D([], [], color="0.3", marker="o", markersize=3.5, label="validation curve"))
    if drew["test"]:
        handles.append(Line2D([], [], color="0.3", marker="*", markersize=12, linestyle="none",
                              markeredgecolor="black", label="test, final"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    fig.suptitle(f"{dataset_title}: accuracy against training compute (lines: validation curve, a dot per "
                 "validated epoch; stars: test accuracy at the end of training)", fontsize=10)
    return fig


def compute_png(dataset_title: str, histories: dict[str, pd.DataFrame], results: dict[str, dict], *,
                dpi: int = 100) -> bytes:
    """:func:`compute_figure` as PNG bytes."""
    buf = io.BytesIO()
    compute_figure(dataset_title, histories, results).savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
