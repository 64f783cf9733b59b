"""The paper's Tables 1-4, Table 5 (FGVC-Aircraft) and the tables of a user's own data and the ablations.

The published rows come from ``published.yaml`` (one place, with its source).
Under them come this run's measured rows: the ViT baseline and the multistage
model per stage and combined, each beside the paper's own "ViT" or "Ours"
number and the difference. A number that was not measured is shown as "—"
with a footnote; nothing is invented. Each table is written as Markdown,
LaTeX and CSV. The table type and the results read from ``metrics/`` are
:mod:`vitfgvc.report.results`'; each dataset at equal compute is
:mod:`vitfgvc.report.compute`'s.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from .. import labels
from ..config import flatten
from .compute import equal_compute_table
from .results import DATASET_TITLES, MISSING, Table, title_of

NOT_MEASURED = "— : not measured in this run (its dataset or stage is not part of this profile)."
STAGE_ROWS = [(labels.metric(s), labels.row(s)) for s in (*labels.PER_STAGE, "combined")]
STAGE_COLUMNS = [labels.column(s) for s in (*labels.PER_STAGE, "combined")]


def published() -> dict:
    return yaml.safe_load(resources.files("vitfgvc.report").joinpath("published.yaml").read_text())


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _delta(ours, paper) -> float | None:
    return None if ours is None or paper is None else round(ours - paper, 2)


def _signed(value) -> str:
    if value == "":
        return ""
    return MISSING if value is None else f"{value:+.2f}"


# ---------------------------------------------------------------- the tables
def table1(pub: dict, results: dict, datasets: list[str]) -> Table:
    rows, notes = [], []
    paper = {r["dataset"]: r for r in pub["table1"]}
    for d in datasets:
        p, m = paper.get(d, {}), results.get(f"prepare/{d}")
        rows.append([p.get("name", title_of(d)),
                     m and m["classes"], m and m["train"], m and m["val"], m and m["test"],
                     p.get("classes"), p.get("train"), p.get("test")])
        if p.get("note"):
            notes.append(f"{p['name']}: {p['note']}")
    notes.append("Measured: the prepared manifests (after any validation split and rejected images). "
                 + NOT_MEASURED + " The paper columns are empty for a dataset the paper does not use.")
    return Table("table1", "Table 1. Summary of datasets",
                 ["Dataset", "Classes", "Train", "Val", "Test", "Classes (paper)", "Train (paper)", "Test (paper)"],
                 rows, notes=notes)


def paper_table(key: str, pub: dict, results: dict) -> Table:
    spec = pub[key]
    ds = spec["datasets"]
    columns = ["Method", "Backbone"]
    for d in ds:
        columns += [f"{title_of(d)} (%)", "Paper (%)", "Δ"]
    rows = []
    paper_of = {}
    for r in spec["rows"]:
        row = [r["method"], r["backbone"]]
        for d in ds:
            row += [str(r["accuracy"][d]) if d in r["accuracy"] else None, "", ""]  # as printed
        rows.append(row)
        if r.get("ours"):
            paper_of[r["ours"]] = (r["method"], r["accuracy"])
    section = len(rows)
    measured = [("baseline", "accuracy", "ViT (baseline, full image)"),
                *[("multistage", k, label) for k, label in STAGE_ROWS]]
    for model, metric, label in measured:
        runs = [results.get(f"{d}/{model}") for d in ds]
        backbone = next((r.get("backbone") for r in runs if r), None)
        row = [label, backbone or MISSING]
        method, paper = paper_of[model]
        for d, run in zip(ds, runs):
            ours = run.get(metric) if run else None
            row += [ours, f"{paper[d]} ({method})", _delta(ours, paper[d])]
        rows.append(row)
    notes = [f"Published rows: {pub['source']}",
             "Measured rows: the final epoch on the test split (never a best epoch); \"Paper\" is the paper's own "
             "ViT row for the baseline and its \"Ours\" row for every multistage row; Δ = measured - paper.",
             NOT_MEASURED]
    for d in ds:
        notes += pub.get("notes", {}).get(d, [])
    if "plant" in ds:
        run = results.get("plant/multistage")
        auc = run.get("mean_auc") if run else None
        base = results.get("plant/baseline")
        notes.append(f"Mean column-wise ROC AUC (the competition's metric): baseline "
                     f"{_fmt(base.get('mean_auc') if base else None, 4)}, multistage combined {_fmt(auc, 4)}.")
    return Table(key, f"{key.replace('table', 'Table ')}. {spec['caption']}", columns, rows, section, notes)


def describe_variant(overrides: dict) -> str:
    """``{"aug": {"erase_p": 0.0}}`` -> ``"aug.erase_p = 0.0"``."""
    return ", ".join(f"{k} = {val}" for k, val in flatten(overrides).items())


def ablation_table(dataset: str, variants: dict[str, dict], results: dict) -> Table:
    """``variants``: name -> the keys it changes (``ablation.variants``); `full` is the multistage run."""
    full = results.get(f"{dataset}/multistage")
    rows = []
    for v, overrides in {"full": {}, **variants}.items():
        run = full if v == "full" else results.get(f"{dataset}/ablation/{v}")
        switch = describe_variant(overrides) or "(the multistage model as set)"
        cells = [run.get(k) if run else None for k, _ in STAGE_ROWS]
        combined = run.get("accuracy") if run else None
        rows.append([v, switch, *cells, _delta(combined, full.get("accuracy") if full else None)])
    notes = ["Each variant is a multistage training that differs from `full` in exactly the keys shown; "
             "`full` is the `multistage` stage's run.",
             "Accuracy (%) on the test split at the final epoch; Δ: combined accuracy minus that of `full`.",
             NOT_MEASURED + " A stage a variant switches off has no accuracy."]
    return Table(f"ablation_{dataset}", f"Ablation on {title_of(dataset)} (accuracy, %)",
                 ["Variant", "Differs from full in", *STAGE_COLUMNS, "Δ combined"], rows, notes=notes)


def digits_table(results: dict, variants: list[str]) -> Table:
    """The CPU benchmark: every digits run with its stages, localisation and time per epoch."""
    runs = [("baseline", "ViT (baseline, full image)"), ("baseline_equal_time", "ViT (baseline, the multistage model's wall-clock time)"),
            ("multistage", "Ours (multistage)")]
    runs += [(f"ablation/{v}", f"ablation: {v}") for v in variants if f"digits/ablation/{v}" in results]
    rows = []
    for key, label in runs:
        r = results.get(f"digits/{key}")
        if r is None and key == "baseline_equal_time":
            continue
        rows.append([label, *[r.get(k) if r else None for k, _ in STAGE_ROWS],
                     r.get("box_recall") if r else None, r.get("box_iou") if r else None,
                     r.get("epochs") if r else None, r.get("seconds_per_epoch") if r else None])
    notes = ["Accuracy (%) on the test canvases at the final epoch. Box recall: share of test images whose "
             "attention object box covers at least half of the digit's true box; box IoU: their mean IoU.",
             NOT_MEASURED]
    return Table("digits", "Cluttered digits: the method on a CPU",
                 ["Run", *STAGE_COLUMNS, "box recall", "box IoU",
                  "epochs", "s / epoch"], rows, notes=notes)


def dataset_table(key: str, title: str, dataset: str, results: dict, published_rows: list[dict],
                  notes: list[str]) -> Table:
    """One dataset the paper's tables do not have: published rows, then the baseline and the multistage
    model stage by stage (and the equal-time baseline where it ran), with the box metrics."""
    rows = [[r["method"], r["backbone"], r["accuracy"], None, None, None] for r in published_rows]
    section = len(rows)
    base = results.get(f"{dataset}/baseline")
    base_acc = base.get("accuracy") if base else None
    ms = results.get(f"{dataset}/multistage")
    measured = [("baseline", "accuracy", "ViT (baseline, full image)")]
    if f"{dataset}/baseline_equal_time" in results:
        measured.append(("baseline_equal_time", "accuracy", "ViT (baseline, the multistage model's wall-clock time)"))
    measured += [("multistage", k, label) for k, label in STAGE_ROWS]
    for run_key, metric, label in measured:
        run = results.get(f"{dataset}/{run_key}")
        acc = run.get(metric) if run else None
        backbone = (run or base or ms or {}).get("backbone") or MISSING
        box = run if run_key == "multistage" and metric == "accuracy" and run else {}
        rows.append([label, backbone, acc, None if run_key == "baseline" else _delta(acc, base_acc),
                     box.get("box_recall"), box.get("box_iou")])
    notes = [*notes,
             "Measured rows: the final epoch on the test split (never a best epoch); Δ = accuracy minus the "
             "baseline's. Box recall: share of test images whose attention object box covers at least half of the "
             "annotated box; box IoU: their mean IoU (\"—\" where the dataset has no boxes).",
             NOT_MEASURED]
    return Table(key, title, ["Method", "Backbone", "Accuracy (%)", "Δ vs baseline", "Box recall", "Box IoU"],
                 rows, section, notes)


def table5(pub: dict, results: dict, dataset: str) -> Table:
    spec = pub["table5"]
    key = "table5" if dataset == "aircraft" else f"table5_{dataset}"
    return dataset_table(key, f"Table 5 (beyond the paper). {spec['caption']}", dataset, results, spec["rows"],
                         [f"Published rows: {spec['source']}", *spec.get("notes", [])])


def user_table(dataset: str, results: dict) -> Table:
    return dataset_table(f"data_{dataset}", f"Your data ({dataset}): baseline vs multi-stage, per stage (accuracy, %)",
                         dataset, results, [], [])


def build_tables(results: dict, datasets: list[str], ablation: dict[str, dict[str, dict]],
                 formats: dict[str, str] | None = None,
                 histories: dict[str, dict[str, pd.DataFrame]] | None = None) -> list[Table]:
    """``ablation``: dataset -> its variants (name -> the keys each changes, as ``ablation.variants``);
    ``formats``: dataset -> its format (default: a named dataset's own; anything else is a user's data);
    ``histories``: dataset -> its training histories, run -> DataFrame (``compute.load_histories``; without
    them the equal-compute tables have no validation columns)."""
    # Table 1, the paper tables whose datasets this profile runs, Table 5, the user's data, the ablations,
    # the digits table, then each dataset at equal compute
    formats = {d: (formats or {}).get(d, d) for d in datasets}
    pub = published()
    tables = [table1(pub, results, datasets)]
    for key in ("table2", "table3", "table4"):
        if set(pub[key]["datasets"]) & set(datasets):
            tables.append(paper_table(key, pub, results))
    for d in datasets:
        if formats[d] == "aircraft":
            tables.append(table5(pub, results, d))
        elif formats[d] not in DATASET_TITLES:
            tables.append(user_table(d, results))
    for d, variants in ablation.items():
        tables.append(ablation_table(d, variants, results))
    if "digits" in datasets:
        tables.append(digits_table(results, list(ablation.get("digits", {}))))
    for d in datasets:
        if any(k.startswith(f"{d}/") for k in results):
            tables.append(equal_compute_table(d, results, (histories or {}).get(d, {})))
    return tables


# ---------------------------------------------------------------- writers
def _cells(t: Table, row: list) -> list[str]:
    """A row as printed: Δ columns signed, numbers with the column's decimals."""
    return [_signed(v) if c.startswith("Δ") else _fmt(v, t.digits.get(c, 2)) for c, v in zip(t.columns, row)]


def to_markdown(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |",
             "|" + "|".join(" --- " for _ in t.columns) + "|"]
    for i, row in enumerate(t.rows):
        if t.section is not None and i == t.section:
            lines.append("| **This reproduction** |" + " |" * (len(t.columns) - 1))
        lines.append("| " + " | ".join(_cells(t, row)) + " |")
    lines.append("")
    lines += [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("Δ", r"$\Delta$"), ("—", "---")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    align = "ll" + "r" * (len(t.columns) - 2)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for i, row in enumerate(t.rows):
        if t.section is not None and i == t.section:
            lines += [r"\midrule", rf"\multicolumn{{{len(t.columns)}}}{{l}}{{\emph{{This reproduction}}}} \\"]
        lines.append(" & ".join(_tex_escape(c) for c in _cells(t, row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex_escape(t.title)}}}",
              rf"\label{{tab:{t.key}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write(tables: list[Table], markdown: Path, folder: Path, *, title: str, preamble: str = "",
          files: dict[str, bytes] | None = None) -> None:
    """``folder`` (the .tex and .csv of every table, and ``files``: name -> bytes, the compute figures) is built
    beside its place and renamed into it, then the Markdown is written: a run killed part-way leaves each
    output whole or absent, never half-written."""
    from ..io import replacing_dir, write_text

    with replacing_dir(folder) as tmp:
        for t in tables:
            write_text(tmp / f"{t.key}.tex", to_latex(t))
            write_text(tmp / f"{t.key}.csv", t.frame().to_csv(index=False))
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
    body = "\n".join(to_markdown(t) for t in tables)
    write_text(markdown, f"# {title}\n\n{preamble}{body}")


def preamble(results: dict, datasets: list[str]) -> str:
    """Where the numbers were measured, and for digits the benchmark's goals as measured."""
    hardware = sorted({describe_hardware(r["hardware"]) for k, r in results.items() if isinstance(r, dict)
                       and r.get("hardware")})
    lines = [f"Generated by the `tables` stage from `metrics/` (see `dvc.yaml`). Measured on: "
             f"{'; '.join(hardware) if hardware else MISSING}.", ""]
    limited = sorted(k for k, r in results.items() if isinstance(r, dict) and r.get("rehearsal"))
    if limited:
        lines += [f"**A rehearsal, not a result**: {len(limited)} runs stopped early (`runtime.limit_steps` / "
                  f"`runtime.limit_eval`: {', '.join(limited)}); their numbers say only that the stages ran.", ""]
    if "digits" in datasets:
        base, ms = results.get("digits/baseline"), results.get("digits/multistage")
        budget = results.get("digits/baseline_equal_time")
        if base and ms:
            gain = ms["accuracy"] - base["accuracy"]
            lines += ["Goals of the CPU benchmark, as measured in this run:", "",
                      f"- multistage combined vs baseline at equal epochs: {ms['accuracy']:.2f} vs "
                      f"{base['accuracy']:.2f} = **{gain:+.2f} points** (goal: at least +10)",
                      f"- object-box recall: **{ms.get('box_recall', 0):.3f}** (goal: at least 0.95), "
                      f"mean box IoU {ms.get('box_iou', 0):.3f}"]
            if budget:
                lines.append(f"- baseline given the multistage model's wall-clock budget ({budget['epochs']} epochs,"
                             f" {budget['train_seconds']:.0f} s vs {ms['train_seconds']:.0f} s): "
                             f"{budget['accuracy']:.2f} ({ms['accuracy'] - budget['accuracy']:+.2f} for multistage)")
                lines.append(versus_equal_time(results, budget))
            lines.append("")
    return "\n".join(lines) + "\n"


def versus_equal_time(results: dict, budget: dict) -> str:
    """The digits preamble's line: every multistage run (the model and each ablation variant) against the
    baseline given the multistage model's wall-clock time, the best first."""
    runs = [("multistage", results.get("digits/multistage")),
            *((k.removeprefix("digits/"), r) for k, r in results.items() if k.startswith("digits/ablation/"))]
    gaps = [(name, r["accuracy"], r["accuracy"] - budget["accuracy"]) for name, r in runs
            if r and r.get("accuracy") is not None]
    best, acc, gap = max(gaps, key=lambda g: g[2])
    each = ", ".join(f"{name} {g:+.2f} ({'reaches it' if g >= 0 else 'falls short'})" for name, _, g in gaps)
    return (f"- best multistage run vs the baseline given the multistage model's wall-clock time: {best} "
            f"{acc:.2f} vs {budget['accuracy']:.2f} (**{gap:+.2f} points**; goal: at least 0); every run: {each}")


def describe_hardware(h: dict) -> str:
    """One line naming the device a run measured on (a training summary's ``hardware``)."""
    device = h.get("gpu") or f"CPU {h.get('cpu', '?')}"
    return f"{device}, {h.get('cores', '?')} cores, {h.get('threads', '?')} torch threads, torch {h.get('torch', '?')}"
