"""DVC stage ``tables``: the paper's Tables 1-4 and the ablations, from ``metrics/``.

Writes ``report.markdown`` (``reports/tables.md``; the CPU profile's
``reports/cpu_benchmark.md``) and ``reports/tables/<table>.tex`` and ``.csv``.
"""

import argparse
from pathlib import Path

from vitfgvc.config import load_params
from vitfgvc.errors import run_main
from vitfgvc.report.tables import build_tables, load_results, preamble, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    results = load_results(Path("metrics"), params)
    datasets = params.pipeline.datasets
    tables = build_tables(results, datasets, {d: params.ablation.variants for d in params.ablation.datasets})
    title = ("CPU benchmark: the method on cluttered digits" if datasets == ["digits"]
             else "Exploring Vision Transformers for Fine-grained Classification: reproduced tables")
    write(tables, Path(params.report.markdown), Path("reports/tables"), title=title,
          preamble=preamble(results, datasets))
    print(f"tables: {len(tables)} tables -> {params.report.markdown} and reports/tables/")


if __name__ == "__main__":
    run_main(main)
