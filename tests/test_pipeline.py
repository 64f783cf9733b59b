"""The whole pipeline on the smoke profile, in a throw-away git + DVC copy of the project.

`dvc repro` runs every stage for every dataset (download from the fixture archives,
prepare, both models, the ablations, tables, figures); a second `dvc repro` runs
nothing; `dvc exp run -S aug.erase_p=0.5` re-runs exactly what reads that key; an
`mlflow server` on the project's store lists every training run. The full profile's
DAG resolves without running.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
import yaml

from vitfgvc.config import VARIANTS

from .conftest import ROOT
from benchmarks.profile import environment

from .pipeline import Project, make_project, stages_run

pytestmark = pytest.mark.slow


def expected_stages(profile: str) -> dict[str, list[str]]:
    params = yaml.safe_load((ROOT / profile).read_text())
    datasets = params["pipeline"]["datasets"]
    return {
        "data": [f"{s}@{d}" for s in ("download", "prepare") for d in datasets],
        "models": [f"{m}@{d}" for m in ("baseline", "multistage") for d in datasets]
        + [f"baseline_equal_time@{d}" for d in params["pipeline"]["equal_time"]],
        "ablations": [f"ablate@{d}-{v}" for d in params["ablation"]["datasets"] for v in params["ablation"]["variants"]],
        "reports": ["tables", "figures"],
    }


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("smoke") / "repo")
    ran, output = project.repro()
    return project, ran, output


def test_every_stage_runs_for_every_dataset(smoke):
    project, ran, output = smoke
    expected = expected_stages("params-smoke.yaml")
    assert sorted(ran) == sorted(sum(expected.values(), [])), output[-3000:]
    assert set(expected["ablations"]) >= {f"ablate@dogs-{v}" for v in ("full", "no_erase", "no_object", "no_parts")}
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
    ablation = pd.read_csv(project.root / "reports/tables/ablation_dogs.csv")
    assert ablation["Variant"].tolist() == yaml.safe_load((ROOT / "params-smoke.yaml").read_text())["ablation"][
        "variants"]
    no_parts = ablation[ablation["Variant"] == "no_parts"].iloc[0]
    assert pd.isna(no_parts["c (parts)"]) and "| no_parts | multistage.parts = False |" in md
    for key in ("table1", "table2", "table3", "table4", "ablation_dogs"):
        tex = (project.root / f"reports/tables/{key}.tex").read_text()
        assert "\\begin{tabular}" in tex and "\\bottomrule" in tex
    figures = sorted(p.name for p in (project.root / "reports/figures").glob("*.png"))
    params = yaml.safe_load((ROOT / "params-smoke.yaml").read_text())
    assert len(figures) == params["figures"]["images"] * len(params["pipeline"]["datasets"])
    assert "dogs_1.png" in figures


def test_second_repro_runs_nothing(smoke):
    project, _, _ = smoke
    start = time.perf_counter()
    ran, output = project.repro()
    seconds = time.perf_counter() - start
    assert ran == [] and "Data and pipelines are up to date." in output
    print(f"\nno-op dvc repro: {seconds:.2f} s")


def test_exp_run_reruns_exactly_what_reads_the_key(smoke):
    project, _, _ = smoke
    assert yaml.safe_load((project.root / "params.yaml").read_text())["aug"]["erase_p"] != 0.5
    start = time.perf_counter()
    proc = project.dvc("exp", "run", "-S", "aug.erase_p=0.5")
    seconds = time.perf_counter() - start
    ran = stages_run(proc.stdout + proc.stderr)
    expected = expected_stages("params-smoke.yaml")
    multistage = [s for s in expected["models"] if s.startswith("multistage@")]
    assert sorted(ran) == sorted(multistage + expected["ablations"] + expected["reports"])
    print(f"\ndvc exp run -S aug.erase_p=0.5: {seconds:.0f} s for {len(ran)} stages")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_lists_every_training_run(smoke):
    project, _, _ = smoke
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{project.root / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=project.root, env=project.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError(f"mlflow server did not start: {server.stderr.read1(4000)!r}") from None
                time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vitfgvc") as r:
            experiment = json.load(r)["experiment"]["experiment_id"]
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                         data=json.dumps({"experiment_ids": [experiment], "max_results": 1000}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as r:
            runs = json.load(r)["runs"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    seen = set()
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        seen.add((tags["dataset"], tags["model"], tags.get("variant", "")))
        assert tags["mlflow.runName"] == "/".join(x for x in (tags["dataset"], tags["model"], tags.get("variant"))
                                                  if x)
        assert run["info"]["status"] == "FINISHED"
    expected = expected_stages("params-smoke.yaml")
    wanted = {(s.split("@")[1], s.split("@")[0], "") for s in expected["models"]}
    wanted |= {(s.split("@")[1].split("-", 1)[0], "multistage", s.split("-", 1)[1]) for s in expected["ablations"]}
    assert seen == wanted
    assert set(VARIANTS) >= {v for _, _, v in seen if v}


def fresh_clone(dest) -> Project:
    """A plain ``git clone`` of this repository: what a new user starts from (nothing set up by hand)."""
    env = environment(DVC_SITE_CACHE_DIR=str(dest.parent / "dvc-site"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], env=env, check=True, capture_output=True)
    return Project(dest, env)


def test_a_fresh_clone_is_a_dvc_project_with_the_paper_dag(tmp_path):
    project = fresh_clone(tmp_path / "clone")
    assert (project.root / ".dvc/config").is_file() and (project.root / ".dvcignore").is_file()
    stages = sorted(json.loads(project.dvc("status", "--json").stdout))  # every stage: nothing has run yet
    assert stages == sorted(sum(expected_stages("params.yaml").values(), []))
    assert len([s for s in stages if s.startswith(("baseline@", "multistage@"))]) == 8
    assert len([s for s in stages if s.startswith("ablate@dogs-")]) == 10 and len(stages) == 28
    dag = project.dvc("dag", "--md").stdout
    assert "download@cub" in dag and "tables" in dag
    assert project.dvc("exp", "show", "--no-pager", "--csv").returncode == 0
    assert not (project.root / "data").exists()


def test_cpu_profile_resolves(tmp_path):
    project = make_project(tmp_path / "cpu", "cpu")
    stages = sorted(json.loads(project.dvc("status", "--json").stdout))
    assert stages == sorted(sum(expected_stages("params-cpu.yaml").values(), []))
    assert "baseline_equal_time@digits" in stages and "ablate@digits-no_object" in stages
