"""DVC stage ``tables``: the paper's Tables 1-4, Table 5 (Aircraft), a user's datasets, the ablations and each dataset
at equal compute, from ``metrics/`` (the metrics and the training histories).

Writes ``<report.dir>/tables.md`` and ``<report.dir>/tables/<table>.tex`` and ``.csv``
(``report.dir`` is ``reports`` for the paper profile, ``reports/cpu`` for the CPU profile), and
``<report.dir>/tables/compute_<dataset>.png``: every run's accuracy against its training
FLOPs and seconds (the validation curves, the final test accuracies), beside the table
of that dataset at equal compute.
"""

import argparse
from pathlib import Path

from vitfgvc.config import load_params
from vitfgvc.errors import run_main
from vitfgvc.report.compute import compute_png, load_histories, runs_of
from vitfgvc.report.results import load_results, title_of
from vitfgvc.report.tables import build_tables, preamble, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    metrics = Path("metrics")
    results = load_results(metrics, params)
    datasets = params.pipeline.datasets
    histories = {d: load_histories(metrics, params, d) for d in datasets}
    tables = build_tables(results, datasets, {d: params.ablation.variants for d in params.ablation.datasets},
                          {d: params.dataset(d).format for d in datasets}, histories)
    # each dataset at equal compute, drawn: accuracy against training FLOPs and seconds of every run
    runs = {d: runs_of(results, d) for d in datasets}
    figures = {f"compute_{d}.png": compute_png(title_of(d), histories[d], runs[d]) for d in datasets if runs[d]}
    title = ("CPU benchmark: the method on cluttered digits" if datasets == ["digits"]
             else "Exploring Vision Transformers for Fine-grained Classification: reproduced tables")
    out = Path(params.report.dir)
    write(tables, out / "tables.md", out / "tables", title=title, preamble=preamble(results, datasets),
          files=figures)
    print(f"tables: {len(tables)} tables and {len(figures)} compute figures -> {out / 'tables.md'} and "
          f"{out / 'tables'}/")


if __name__ == "__main__":
    run_main(main)
