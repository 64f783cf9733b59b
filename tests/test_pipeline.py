"""The whole pipeline on the smoke profile, in the copy ``benchmarks/profiles.py smoke`` makes.

`dvc repro` runs every stage for every dataset (download from the fixture archives,
prepare, both models, the ablations, their evaluations, tables, figures); a second
`dvc repro` runs nothing; `dvc exp run` re-runs exactly what a changed key affects and
nothing for a `runtime` key; an edit of the figure code re-runs no training; an
`mlflow server` on the project's store lists every training run with its evaluation.
A plain `git clone` of the repository is a DVC project with the paper's DAG.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
import yaml

from benchmarks.profiles import environment

from .conftest import ROOT
from .pipeline import Project, make_project, mlflow_server, stages_run

pytestmark = pytest.mark.slow


def expected_stages(profile: str) -> dict[str, list[str]]:
    params = yaml.safe_load((ROOT / profile).read_text())
    datasets, equal_time = params["pipeline"]["datasets"], params["pipeline"]["equal_time"]
    ablations = [(d, v) for d in params["ablation"]["datasets"] for v in params["ablation"]["variants"]]
    return {
        "data": [f"{s}@{d}" for s in ("download", "prepare") for d in datasets],
        "baseline": [f"baseline@{d}" for d in datasets] + [f"baseline_equal_time@{d}" for d in equal_time],
        "multistage": [f"multistage@{d}" for d in datasets],
        "ablations": [f"ablate@{d}-{v}" for d, v in ablations],
        "evaluate_baseline": [f"evaluate@{d}-baseline" for d in datasets]
        + [f"evaluate_equal_time@{d}" for d in equal_time],
        "evaluate_multistage": [f"evaluate@{d}-multistage" for d in datasets],
        "evaluate_ablations": [f"evaluate_ablation@{d}-{v}" for d, v in ablations],
        "figures": [f"figures@{d}" for d in datasets],
        "tables": ["tables"],
    }


def every_stage(profile: str) -> list[str]:
    return sorted(sum(expected_stages(profile).values(), []))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("smoke") / "repo")
    ran, output = project.repro()
    return project, ran, output


def test_every_stage_runs_for_every_dataset(smoke):
    project, ran, output = smoke
    assert sorted(ran) == every_stage("params-smoke.yaml"), output[-3000:]
    print(f"\nsmoke dvc repro: {project.timings['repro']:.0f} s for {len(ran)} stages")


def test_reports(smoke):
    project, _, _ = smoke
    md = (project.root / "reports/tables.md").read_text()
    for title in ("Table 1. Summary of datasets", "Table 2.", "Table 3.", "Table 4.", "Ablation on Stanford Dogs"):
        assert title in md
    assert "| API-Net [26] | ResNet-101 | 90.3 |" in md  # a published row, as printed
    table2 = pd.read_csv(project.root / "reports/tables/table2.csv")
    measured = json.loads((project.root / "metrics/dogs/multistage.json").read_text())
    combined = table2[table2["Method"].str.startswith("Ours, combined")].iloc[0]
    assert float(combined["Stanford Dogs (%)"]) == pytest.approx(measured["accuracy"])
    assert float(combined["Δ"]) == pytest.approx(measured["accuracy"] - 93.2, abs=0.006)
    params = yaml.safe_load((ROOT / "params-smoke.yaml").read_text())
    ablation = pd.read_csv(project.root / "reports/tables/ablation_dogs.csv")
    assert ablation["Variant"].tolist() == ["full", *params["ablation"]["variants"]]
    assert ablation.set_index("Variant").loc["full", "combined"] == pytest.approx(measured["accuracy"])
    no_parts = ablation[ablation["Variant"] == "no_parts"].iloc[0]
    assert pd.isna(no_parts["c (parts)"]) and "| no_parts | multistage.parts = False |" in md
    for key in ("table1", "table2", "table3", "table4", "ablation_dogs"):
        tex = (project.root / f"reports/tables/{key}.tex").read_text()
        assert "\\begin{tabular}" in tex and "\\bottomrule" in tex
    for dataset in params["pipeline"]["datasets"]:
        figures = sorted(p.name for p in (project.root / "reports/figures" / dataset).glob("*.png"))
        assert figures == [f"{k + 1}.png" for k in range(params["figures"]["images"])]
    evaluation = project.root / "evaluation/dogs/multistage"
    assert {"predictions.csv", "per_class.csv", "confusion.csv", "confusion.png", "attention.png"} <= {
        p.name for p in evaluation.iterdir()}


def test_a_users_photographs_go_through_the_whole_pipeline(smoke):
    """``mydata``: an imagefolder of real photographs (scikit-image's samples) from download to ``vitfgvc predict``."""
    project, _, _ = smoke
    prepared = json.loads((project.root / "metrics/prepare/mydata.json").read_text())
    assert (prepared["classes"], prepared["train"], prepared["test"], prepared["duplicates"]) == (4, 24, 12, 1)
    rejected = pd.read_csv(project.root / "data/prepared/mydata/rejected.csv")
    assert rejected["source"].tolist() == ["test/cat/cat_copy.jpg"]
    md = (project.root / "reports/tables.md").read_text()
    assert "### Your data (mydata): baseline vs multi-stage, per stage (accuracy, %)" in md
    measured = json.loads((project.root / "metrics/mydata/multistage.json").read_text())
    mine = pd.read_csv(project.root / "reports/tables/data_mydata.csv").set_index("Method")
    assert mine.loc["Ours, combined (mean of the stage probabilities)", "Accuracy (%)"] == pytest.approx(
        measured["accuracy"])
    assert "box_recall" not in measured  # no boxes: the table shows a dash
    photos = sorted(str(p) for p in (project.root / "data/fixtures/photos/test/coffee").glob("*.jpg"))
    proc = project.run(sys.executable, "-m", "vitfgvc.cli", "predict", "models/mydata/multistage", *photos,
                       "--json", "--top-k", "2")
    results = json.loads(proc.stdout)
    assert [r["image"] for r in results] == photos and not any("error" in r for r in results)
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["class_name"] in
               {"astronaut", "cat", "coffee", "rocket"} for r in results)
    assert set(results[0]["stages"]) == {"a", "b", "c"}


def test_second_repro_runs_nothing(smoke):
    project, _, _ = smoke
    start = time.perf_counter()
    ran, output = project.repro()
    seconds = time.perf_counter() - start
    assert ran == [] and "Data and pipelines are up to date." in output
    print(f"\nno-op dvc repro: {seconds:.2f} s")


def test_runtime_keys_rerun_nothing(smoke):
    project, _, _ = smoke
    proc = project.dvc("exp", "run", "-S", "runtime.workers=1", "-S", "runtime.eval_batch_size=3",
                       "-S", "runtime.ckpt_every=7", "-S", "runtime.augment=per_sample")
    assert stages_run(proc.stdout + proc.stderr) == []


def test_an_edit_of_the_figure_code_retrains_nothing(smoke):
    project, _, _ = smoke
    viz = project.root / "src/vitfgvc/viz.py"
    original = viz.read_text()
    try:
        viz.write_text(original + "# an edit\n")
        changed = sorted(json.loads(project.dvc("status", "--json").stdout))
    finally:
        viz.write_text(original)
    expected = expected_stages("params-smoke.yaml")
    assert changed == sorted(expected["evaluate_baseline"] + expected["evaluate_multistage"]
                             + expected["evaluate_ablations"] + expected["figures"])


def _status_after(project: Project, **dotted) -> list[str]:
    """The stages ``dvc status`` finds changed once params.yaml has the ``dotted`` keys set (then put back)."""
    from .conftest import set_dotted

    path = project.root / "params.yaml"
    original = path.read_text()
    try:
        path.write_text(yaml.safe_dump(set_dotted(yaml.safe_load(original), **dotted)))
        return sorted(json.loads(project.dvc("status", "--json").stdout))
    finally:
        path.write_text(original)


def test_a_key_invalidates_exactly_the_stages_that_read_it(smoke):
    """`dvc status` lists the stages whose own inputs changed (what runs after them follows from their outputs,
    as the exp run below shows)."""
    project, _, _ = smoke
    expected = expected_stages("params-smoke.yaml")
    assert yaml.safe_load((project.root / "params.yaml").read_text())["aug"]["erase_p"] != 0.5
    assert _status_after(project, **{"aug.erase_p": 0.5}) == sorted(expected["multistage"] + expected["ablations"])
    assert _status_after(project, **{"transform.max_rotate": 5.0}) == sorted(
        expected["baseline"] + expected["multistage"] + expected["ablations"])
    assert _status_after(project, **{"datasets.cub.high_res": 48}) == ["baseline@cub", "multistage@cub",
                                                                       "prepare@cub"]
    assert _status_after(project, **{"runtime.workers": 3, "runtime.mlflow_experiment": "other"}) == []


def test_exp_run_reruns_exactly_what_reads_the_key(smoke):
    project, _, _ = smoke
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    start = time.perf_counter()
    proc = project.dvc("exp", "run", "-S", "datasets.cub.train.epochs=2")
    seconds = time.perf_counter() - start
    assert sorted(stages_run(proc.stdout + proc.stderr)) == [
        "baseline@cub", "evaluate@cub-baseline", "evaluate@cub-multistage", "figures@cub", "multistage@cub", "tables"]
    print(f"\ndvc exp run -S datasets.cub.train.epochs=2: {seconds:.0f} s")
    exps = project.dvc("exp", "show", "--csv", "--no-pager").stdout
    assert "datasets.cub.train.epochs" in exps and "accuracy" in exps

    # an edited variant re-runs that variant (its training and evaluation) and the tables, nothing else
    assert params["ablation"]["variants"]["no_erase"] == {"aug": {"erase_p": 0.0}}
    proc = project.dvc("exp", "run", "-S", "ablation.variants.no_erase.aug.erase_p=0.1")
    assert sorted(stages_run(proc.stdout + proc.stderr)) == ["ablate@dogs-no_erase", "evaluate_ablation@dogs-no_erase",
                                                             "tables"]


def test_mlflow_server_lists_every_training_run(smoke):
    project, _, _ = smoke
    with mlflow_server(project.root / "mlflow.db", project.env) as base:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vitfgvc") as r:
            experiment = json.load(r)["experiment"]["experiment_id"]
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                         data=json.dumps({"experiment_ids": [experiment], "max_results": 1000}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as r:
            runs = json.load(r)["runs"]
    seen = set()
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        seen.add((tags["dataset"], tags["model"], tags.get("variant", "")))
        assert tags["mlflow.runName"] == "/".join(x for x in (tags["dataset"], tags["model"], tags.get("variant"))
                                                  if x)
        assert run["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"train_loss", "test_accuracy"} <= metrics  # training and its evaluation: one run
    expected = expected_stages("params-smoke.yaml")
    wanted = {(s.split("@")[1], s.split("@")[0], "") for s in expected["baseline"] + expected["multistage"]
              if not s.startswith("baseline_equal_time@")}
    wanted |= {(s.split("@")[1].split("-", 1)[0], "multistage", s.split("-", 1)[1]) for s in expected["ablations"]}
    assert seen == wanted


def fresh_clone(dest) -> Project:
    """A plain ``git clone`` of this repository: what a new user starts from (nothing set up by hand)."""
    env = environment(DVC_SITE_CACHE_DIR=str(dest.parent / "dvc-site"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], env=env, check=True, capture_output=True)
    return Project(dest, env)


def test_a_fresh_clone_is_a_dvc_project_with_the_paper_dag(tmp_path):
    project = fresh_clone(tmp_path / "clone")
    assert (project.root / ".dvc/config").is_file() and (project.root / ".dvcignore").is_file()
    stages = sorted(json.loads(project.dvc("status", "--json").stdout))  # every stage: nothing has run yet
    assert stages == every_stage("params.yaml")
    assert len([s for s in stages if s.startswith(("baseline@", "multistage@"))]) == 10  # 4 datasets + Aircraft
    assert len([s for s in stages if s.startswith("ablate@dogs-")]) == 9
    assert len([s for s in stages if s.startswith("evaluate")]) == 10 + 9
    dry = project.dvc("repro", "--dry", "--force").stdout  # --force: see the README on plain --dry
    assert sorted(re.findall(r"^Running stage '([^']+)'", dry, re.M)) == stages
    assert not (project.root / "dvc.lock").exists()
    dag = project.dvc("dag", "--md").stdout
    assert "download@cub" in dag and "tables" in dag
    assert project.dvc("exp", "show", "--no-pager", "--csv").returncode == 0
    assert not (project.root / "data").exists()


def test_cpu_profile_resolves(tmp_path):
    project = make_project(tmp_path / "cpu", "cpu")
    stages = sorted(json.loads(project.dvc("status", "--json").stdout))
    assert stages == every_stage("params-cpu.yaml")
    assert "baseline_equal_time@digits" in stages and "ablate@digits-parts_small" in stages
