"""Accuracy against training compute: the baseline interpolated to each model's FLOPs, never extrapolated."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vitfgvc.config import Params
from vitfgvc.report.compute import (compute_figure, compute_png, curve, equal_compute_table, interpolate,
                                    load_histories, runs_of, total)
from vitfgvc.report.results import load_results
from vitfgvc.report.tables import build_tables, to_latex, to_markdown, write

from .conftest import smoke_params

T = 1e12
BASE, EQUAL, MS = "ViT (baseline, full image)", "ViT (baseline, the multistage model's wall-clock time)", \
    "Ours (multistage)"


def history(epochs: int, flops: float, seconds: float, val: dict[int, float] | None = None,
            stages: bool = False) -> pd.DataFrame:
    """``epochs`` rows of ``flops`` and ``seconds`` each; ``val``: epoch -> validation accuracy (NaN elsewhere)."""
    h = pd.DataFrame({"epoch": range(1, epochs + 1), "train_loss": np.linspace(2, 1, epochs),
                      "seconds": seconds, "flops": flops})
    h["cum_seconds"], h["cum_flops"] = h["seconds"].cumsum(), h["flops"].cumsum()
    if val is not None:
        h["val_accuracy"] = h["epoch"].map(val)
        if stages:
            for s in "abc":
                h[f"val_accuracy_{s}"] = h["val_accuracy"] - 1
    return h


def metrics(accuracy: float, flops: float | None, seconds: float, **extra) -> dict:
    r = {"accuracy": accuracy, "train_seconds": seconds, "epochs": 4, **extra}
    if flops is not None:
        r["train_flops"] = flops
    return r


@pytest.fixture()
def results() -> dict:
    return {"prepare/dogs": {"classes": 120, "train": 12000, "val": 600, "test": 8580},
            "dogs/baseline": metrics(80.0, 100 * T, 1000.0),
            "dogs/baseline_equal_time": metrics(86.0, 400 * T, 4000.0, epochs=16),
            "dogs/multistage": metrics(88.0, 300 * T, 4100.0),
            "dogs/ablation/no_erase": metrics(82.0, 250 * T, 3500.0),
            "dogs/ablation/no_parts": metrics(75.0, 50 * T, 900.0)}


@pytest.fixture()
def histories() -> dict[str, pd.DataFrame]:
    return {"baseline": history(4, 25 * T, 250.0, {2: 70.0, 4: 78.0}),
            "baseline_equal_time": history(16, 25 * T, 250.0, {4: 72.0, 8: 78.0, 12: 81.0, 16: 85.0}),
            "multistage": history(4, 75 * T, 1025.0, {2: 75.0, 4: 83.0}, stages=True),
            "ablation/no_erase": history(5, 50 * T, 700.0, {5: 80.0}),
            # an older history: no FLOPs, no cumulative columns, no validation
            "ablation/no_parts": pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.5], "seconds": [400.0, 500.0]})}


def rows(table) -> pd.DataFrame:
    return table.frame().set_index("Run")


def test_interpolation_exact_between_and_outside():
    points = [(100.0, 80.0), (400.0, 86.0)]
    assert interpolate(points, 100.0) == 80.0 and interpolate(points, 400.0) == 86.0  # exactly at a point
    assert interpolate(points, 300.0) == pytest.approx(84.0)
    assert interpolate(points, 250.0) == pytest.approx(83.0)
    assert interpolate(points, 99.9) is None and interpolate(points, 400.1) is None  # never extrapolated
    assert interpolate([], 1.0) is None and interpolate(points, None) is None
    assert interpolate([(100.0, 80.0)], 100.0) == 80.0 and interpolate([(100.0, 80.0)], 101.0) is None
    assert interpolate([(1.0, 10.0), (1.0, 20.0), (3.0, 40.0)], 2.0) == pytest.approx(27.5)  # same x: averaged


def test_each_run_beside_the_baseline_at_its_flops(results, histories):
    table = equal_compute_table("dogs", results, histories)
    assert table.title == ("Stanford Dogs at equal compute: each model beside the baseline given the same "
                           "training FLOPs")
    t = rows(table)
    assert list(t.index) == [BASE, EQUAL, MS, "ablation: no_erase", "ablation: no_parts"]
    ms = t.loc[MS]
    assert (ms["Train TFLOPs"], ms["Train seconds"], ms["Test accuracy (%)"]) == (300.0, 4100.0, 88.0)
    # test: 80 + (300 - 100) / (400 - 100) * (86 - 80) = 84; val: the equal-time curve at 300 TFLOPs is exactly 81
    assert (ms["Baseline test at these FLOPs (%)"], ms["Δ test"]) == (84.0, 4.0)
    assert (ms["Final val accuracy (%)"], ms["Baseline val at these FLOPs (%)"], ms["Δ val"]) == (83.0, 81.0, 2.0)
    no_erase = t.loc["ablation: no_erase"]  # 250 TFLOPs: test 83 (between the baselines), val 79.5 (between 78, 81)
    assert (no_erase["Baseline test at these FLOPs (%)"], no_erase["Δ test"]) == (83.0, -1.0)
    assert (no_erase["Baseline val at these FLOPs (%)"], no_erase["Δ val"]) == (79.5, 0.5)
    base = t.loc[BASE]  # the baseline is its own reference on test; its annealed end beats the longer run's middle
    assert (base["Baseline test at these FLOPs (%)"], base["Δ test"]) == (80.0, 0.0)
    assert (base["Final val accuracy (%)"], base["Baseline val at these FLOPs (%)"], base["Δ val"]) == (78.0, 72.0, 6.0)
    assert (t.loc[EQUAL, "Δ test"], t.loc[EQUAL, "Δ val"]) == (0.0, 0.0)
    no_parts = t.loc["ablation: no_parts"]  # 50 TFLOPs: below every baseline budget; an old history without val
    assert no_parts["Train TFLOPs"] == 50.0 and no_parts["Train seconds"] == 900.0
    assert no_parts[["Baseline test at these FLOPs (%)", "Δ test", "Final val accuracy (%)",
                     "Baseline val at these FLOPs (%)", "Δ val"]].isna().all()
    md = to_markdown(table)
    assert f"| {MS} | 300.00 | 4100.0 | 88.00 | 84.00 | +4.00 | 83.00 | 81.00 | +2.00 |" in md
    assert "| ablation: no_parts | 50.00 | 900.0 | 75.00 | — | — | — | — | — |" in md
    assert "FlopCounterMode" in md and "lower bound" in md and "never extrapolated" in md
    assert "the equal-time baseline's validation curve" in md
    assert "$\\Delta$ test" in to_latex(table)


def test_without_the_equal_time_baseline_the_baselines_own_curve_is_the_reference(results, histories):
    results = {k: v for k, v in results.items() if "equal_time" not in k}
    histories = {k: v for k, v in histories.items() if k != "baseline_equal_time"}
    t = rows(equal_compute_table("dogs", results, histories))
    assert EQUAL not in t.index
    assert pd.isna(t.loc[MS, "Baseline test at these FLOPs (%)"])  # one baseline point: only its own budget
    assert pd.isna(t.loc[MS, "Baseline val at these FLOPs (%)"])  # 300 TFLOPs: past the baseline's 100
    assert t.loc["ablation: no_parts", "Baseline val at these FLOPs (%)"] == 70.0  # 50 TFLOPs: its epoch 2
    assert t.loc[BASE, "Δ val"] == 0.0


def test_old_files_without_flops_or_validation_show_dashes():
    results = {"digits/baseline": {"accuracy": 70.0, "train_seconds": 100.0, "epochs": 4},
               "digits/multistage": {"accuracy": 81.5, "train_seconds": 400.0, "epochs": 4}}
    old = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "seconds": [40.0, 60.0]})
    table = equal_compute_table("digits", results, {"baseline": old})
    t = rows(table)
    assert list(t.index) == [BASE, MS]
    assert pd.isna(t.loc[BASE, "Train TFLOPs"]) and t.loc[BASE, "Train seconds"] == 100.0
    assert t.drop(columns=["Train seconds", "Test accuracy (%)"]).isna().all().all()
    assert "| Ours (multistage) | — | 400.0 | 81.50 | — | — | — | — | — |" in to_markdown(table)
    # a history's own totals stand in for metrics written before the key existed
    assert total({"accuracy": 1.0}, history(3, 2 * T, 5.0), "flops") == 6 * T
    assert total(None, old, "seconds") == 100.0 and total(None, old, "flops") is None
    assert curve(old, "seconds").empty and curve(None).empty


def test_build_tables_adds_a_compute_table_per_dataset_with_results(results, histories):
    tables = build_tables(results, ["dogs", "cub"], {}, None, {"dogs": histories})
    keys = [t.key for t in tables]
    assert keys[-1] == "compute_dogs" and "compute_cub" not in keys  # nothing trained on cub
    assert rows(tables[-1]).loc[MS, "Δ val"] == 2.0
    no_histories = rows(build_tables(results, ["dogs"], {})[-1])  # the old call: test columns only
    assert no_histories.loc[MS, "Δ test"] == 4.0 and pd.isna(no_histories.loc[MS, "Δ val"])


def test_the_tflop_column_keeps_small_budgets_readable():
    results = {"digits/baseline": metrics(70.0, 0.00412 * T, 10.0),
               "digits/multistage": metrics(80.0, 0.0153 * T, 40.0)}
    md = to_markdown(equal_compute_table("digits", results, {}))
    assert "| ViT (baseline, full image) | 0.00412 | 10.0 |" in md and "| Ours (multistage) | 0.01530 |" in md


def test_figure_two_panels_one_legend_entry_per_run(results, histories):
    fig = compute_figure("Stanford Dogs", histories, runs_of(results, "dogs"))
    flops_ax, seconds_ax = fig.axes
    assert "FLOPs" in flops_ax.get_xlabel() and "time" in seconds_ax.get_xlabel()
    assert flops_ax.get_ylabel() == "accuracy (%)" and flops_ax.get_xscale() == "linear"  # 50..400: no log
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [BASE, EQUAL, MS, "ablation: no_erase", "ablation: no_parts", "validation curve", "test, final"]
    stars = [line for line in flops_ax.get_lines() if line.get_marker() == "*"]
    assert sorted(float(line.get_xdata()[0]) for line in stars) == [50.0, 100.0, 250.0, 300.0, 400.0]
    curves = [line for line in flops_ax.get_lines() if line.get_marker() == "o"]
    assert len(curves) == 4  # no_parts has no validation
    ms = next(c for c in curves if c.get_color() == "#d62728")
    assert list(ms.get_xdata()) == [150.0, 300.0] and list(ms.get_ydata()) == [75.0, 83.0]
    star_colors = {line.get_color() for line in seconds_ax.get_lines() if line.get_marker() == "*"}
    assert len(star_colors) == 5  # one colour per run
    assert "validation curve" in fig.get_suptitle() and "test accuracy" in fig.get_suptitle()


def test_figure_without_validation_or_flops_still_draws_the_test_points():
    results = {"baseline": metrics(70.0, None, 100.0), "multistage": metrics(80.0, None, 40000.0)}
    fig = compute_figure("Digits", {}, results)
    flops_ax, seconds_ax = fig.axes
    assert [line.get_marker() for line in seconds_ax.get_lines()] == ["*", "*"]
    assert seconds_ax.get_xscale() == "log"  # 100 s to 40000 s
    assert not flops_ax.get_lines() and "not measured" in flops_ax.texts[0].get_text()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [BASE, MS, "test, final"]


def test_the_compute_png_is_written_with_the_tables(results, histories, tmp_path):
    png = compute_png("Stanford Dogs", histories, runs_of(results, "dogs"), dpi=50)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    tables = build_tables(results, ["dogs"], {}, histories={"dogs": histories})
    write(tables, tmp_path / "tables.md", tmp_path / "tables", title="t", files={"compute_dogs.png": png})
    assert (tmp_path / "tables/compute_dogs.png").read_bytes() == png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tables", "tables.md"]  # no temporary folder left


def test_the_stage_reads_only_the_configured_runs(results, histories, tmp_path):
    params = Params.model_validate(smoke_params(**{
        "pipeline.datasets": ["dogs", "digits"], "pipeline.equal_time": ["dogs"], "ablation.datasets": ["dogs"],
        "ablation.variants": {"no_erase": {"aug": {"erase_p": 0.0}}}}))
    dogs = tmp_path / "dogs"
    (dogs / "ablation").mkdir(parents=True)
    for run in ("baseline", "baseline_equal_time", "ablation/no_erase", "ablation/no_parts"):  # no_parts: dropped
        (dogs / f"{run}.json").write_text(json.dumps(results[f"dogs/{run}"]))
        histories[run].to_csv(dogs / f"{run}_history.csv", index=False)
    (dogs / "multistage_history.csv").write_text("")  # a history cut to nothing: named in the error
    from vitfgvc.errors import UserError
    with pytest.raises(UserError, match="multistage_history.csv: not a readable training history CSV"):
        load_histories(tmp_path, params, "dogs")
    (dogs / "multistage_history.csv").unlink()  # not trained yet: left out
    loaded = load_histories(tmp_path, params, "dogs")
    assert list(loaded) == ["baseline", "baseline_equal_time", "ablation/no_erase"]
    assert loaded["baseline_equal_time"]["val_accuracy"].isna().sum() == 12  # validated every 4th epoch
    measured = load_results(tmp_path, params)  # as the tables stage reads them
    assert list(runs_of(measured, "dogs")) == ["baseline", "baseline_equal_time", "ablation/no_erase"]
    assert load_histories(tmp_path, params, "digits") == {} and runs_of(measured, "digits") == {}
    t = rows(equal_compute_table("dogs", measured, loaded))
    assert list(t.index) == [BASE, EQUAL, MS, "ablation: no_erase"]
    assert t.loc["ablation: no_erase", "Δ val"] == 0.5 and pd.isna(t.loc[MS, "Test accuracy (%)"])
