"""The reports' shared vocabulary: the table type, the runs a profile configures and reading their metrics.

Both :mod:`vitfgvc.report.tables` (the paper's tables) and :mod:`vitfgvc.report.compute`
(the tables and figures at equal compute) build on these; neither needs the other's
to say what a table is or which runs there are, so the arrows run one way:
``tables -> compute -> results`` and ``tables -> results``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import Params
from ..data.registry import SPECS

DATASET_TITLES = {name: spec.title for name, spec in SPECS.items() if not spec.user}
MISSING = "—"


@dataclass
class Table:
    key: str                          # file stem
    title: str
    columns: list[str]
    rows: list[list]                  # cells: str, number or None (not measured)
    section: int | None = None        # index of the first measured row
    notes: list[str] = field(default_factory=list)
    digits: dict[str, int] = field(default_factory=dict)  # column -> decimals shown (default 2)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)


def title_of(dataset: str) -> str:
    """A named dataset's title; a user's dataset by its entry's name."""
    return DATASET_TITLES.get(dataset, dataset)


def configured_runs(params: Params) -> list[str]:
    """The metrics keys (paths under ``metrics/`` without ``.json``) of every run ``params`` configures."""
    return [*(f"prepare/{d}" for d in params.pipeline.datasets),
            *(f"{d}/{m}" for d in params.pipeline.datasets for m in ("baseline", "multistage")),
            *(f"{d}/baseline_equal_time" for d in params.pipeline.equal_time),
            *(f"{d}/ablation/{v}" for d in params.ablation.datasets for v in params.ablation.variants)]


def load_results(metrics: Path, params: Params) -> dict[str, dict]:
    """``{"dogs/baseline": {...}, "dogs/ablation/no_erase": {...}, "prepare/dogs": {...}}``.

    Only the runs ``params`` configures that have metrics: DVC leaves the metrics of a
    stage that left the pipeline (a dropped ablation variant, say) where they were, and
    the tables must not report them.
    """
    paths = (metrics / f"{key}.json" for key in configured_runs(params))
    return {str(p.relative_to(metrics).with_suffix("")): json.loads(p.read_text()) for p in paths if p.is_file()}
