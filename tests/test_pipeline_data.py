"""`dvc repro` of the download and prepare stages on the smoke profile, in a throw-away repository."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from .pipeline import make_project

pytestmark = pytest.mark.slow

DATASETS = ["cub", "dogs", "cars", "plant", "digits"]


def test_download_and_prepare_stages(tmp_path):
    project = make_project(tmp_path / "repo")
    targets = [f"{stage}@{d}" for stage in ("download", "prepare") for d in DATASETS]
    ran, _ = project.repro(*targets)
    assert sorted(ran) == sorted(targets)
    for d in DATASETS:
        manifest = pd.read_csv(project.root / f"data/prepared/{d}/manifest.csv")
        summary = json.loads((project.root / f"metrics/prepare/{d}.json").read_text())
        assert summary["images"] == len(manifest) > 0 and summary["rejected"] == 0
        assert set(manifest.split) >= {"train", "test"}
    ran, output = project.repro(*targets)
    assert ran == [], output
    assert "up to date" in output
