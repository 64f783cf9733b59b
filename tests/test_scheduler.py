"""``vitfgvc repro``: the stages ``dvc repro`` would run, up to N at once on Ray, with the same outcome.

A sub-DAG of the smoke profile (two datasets: download, prepare, both trainings, their
evaluations, the figures and the tables; 15 stages) runs once with ``dvc repro`` and then
with ``vitfgvc repro --jobs 2``: on a local Ray, through a failure and a Ctrl-C, and on a
two-node Ray cluster on loopback logging to an ``mlflow server``. Each ends as the
sequential run ended (``benchmarks/outcome.py``: every out and dep hash, the files that hold
measurements without them, the MLflow runs) with ``dvc status`` clean. Ray stays on
loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set in conftest).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmarks.outcome import compare
from benchmarks.profiles import PROFILES, environment, sync
from vitfgvc import scheduler

from .conftest import ROOT, set_dotted, smoke_params
from .pipeline import Project, mlflow_server

pytestmark = pytest.mark.slow

SUB_DAG = {"pipeline.datasets": ["digits", "mydata"], "pipeline.equal_time": [], "ablation.datasets": []}
VITFGVC = str(Path(sys.executable).parent / "vitfgvc")  # the console script the install made


def sub_dag(dest: Path, **dotted) -> Project:
    """A copy of the project (as ``benchmarks/profiles.py`` makes one) with the sub-DAG's params."""
    env = environment(DVC_SITE_CACHE_DIR=str(dest.parent / f"{dest.name}-dvc-site"), PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    sync(dest, PROFILES["smoke"], env, ROOT, params=set_dotted(smoke_params(**SUB_DAG), **dotted))
    return Project(dest, env)


def vitfgvc_repro(project: Project, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([VITFGVC, "repro", *args], cwd=project.root, env={**project.env, **(env or {})},
                          capture_output=True, text=True, timeout=900)


def started(output: str) -> list[str]:
    return re.findall(r"\] start (\S+)", output)


def stage_processes(root: Path) -> list[str]:
    """Command lines of the processes running a stage script in ``root``."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["cwd"] == str(root) and "stages/" in cmd:
            found.append(cmd)
    return found


def assert_up_to_date(project: Project) -> None:
    status = project.dvc("status").stdout
    assert "Data and pipelines are up to date." in status, status


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Project:
    project = sub_dag(tmp_path_factory.mktemp("sequential") / "repo")
    ran, output = project.repro()
    assert len(ran) == 15, output[-3000:]
    return project


# ------------------------------------------------------------------ the plan, and --dry
def test_waves_critical_path_and_makespan():
    order = ["a", "b", "c", "d", "e"]
    upstream = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    weight = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0, "e": 4.0}.__getitem__
    assert scheduler.waves(order, upstream) == [["a", "e"], ["b", "c"], ["d"]]
    assert scheduler.critical_path(order, upstream, weight) == (["a", "b", "d"], 7.0)
    assert scheduler.makespan(order, upstream, weight, 1) == 13.0  # one at a time: the sum
    assert scheduler.makespan(order, upstream, weight, 2) == 7.0   # e beside a and c: the critical path
    assert scheduler.makespan(order, upstream, weight, 8) == 7.0


def test_rehearsal_report_gives_every_paper_stage_its_hours():
    weights, source = scheduler.rehearsal_weights(ROOT)
    assert source == "reports/rehearsal.md"
    text = (ROOT / source).read_text()
    hours = float(re.search(r"^\| multistage@cub \|.*\| ([\d.]+) \|$", text, re.M).group(1))
    assert weights["multistage@cub"] == hours  # a training: the full run's extrapolated hours
    assert weights["evaluate@cub-multistage"] > 0 and weights["evaluate_ablation@dogs-no_erase"] > 0
    assert 0 < weights["download@cub"] < 1  # the rehearsal's own seconds, in hours
    assert scheduler._evaluation_stage("ablate@dogs-no_erase") == "evaluate_ablation@dogs-no_erase"


def test_dry_prints_the_paper_dag_in_waves_with_its_critical_path_and_estimate(tmp_path):
    env = environment(DVC_SITE_CACHE_DIR=str(tmp_path / "site"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp_path / "clone")], env=env, check=True)
    proc = subprocess.run([VITFGVC, "repro", "--dry", "--jobs", "8"], cwd=tmp_path / "clone", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "54 of 54 stages would run." in out
    waves = re.findall(r"^wave (\d+) \((\d+)\): (.*)$", out, re.M)
    assert sum(int(n) for _, n, _ in waves) == 54
    assert waves[0][2].split() == [f"download@{d}" for d in ("cub", "dogs", "cars", "plant", "aircraft")]
    assert waves[-1][2].split() == ["tables"]
    path = re.search(r"^critical path \(hours on the rehearsal's device, from reports/rehearsal.md\): (.*): (.*)$",
                     out, re.M)
    assert path and path.group(1).startswith("download@") and path.group(1).endswith("tables")
    one = re.search(r"^with 1 GPU \(--jobs 1\), each as fast as that device: about ([\d.]+) h$", out, re.M)
    eight = re.search(r"^with 8 GPUs \(--jobs 8\), each as fast as that device: about ([\d.]+) h "
                      r"\(one at a time: ([\d.]+) h\)$", out, re.M)
    assert one and eight and float(eight.group(1)) < float(one.group(1)) == pytest.approx(float(eight.group(2)))
    assert not (tmp_path / "clone/dvc.lock").exists() and not (tmp_path / "clone/logs").exists()


# ------------------------------------------------------------------ running
def test_local_jobs_2_stops_at_a_failure_survives_ctrl_c_and_ends_as_dvc_repro(sequential, tmp_path):
    # 1. one dataset's folder is missing: its download fails; the stage beside it finishes and is recorded,
    #    nothing new starts, and the command names the stage and its log
    project = sub_dag(tmp_path / "local", **{"datasets.mydata.path": "data/fixtures/no-such-folder"})
    first = vitfgvc_repro(project, "--jobs", "2")
    out = first.stdout
    assert first.returncode == 1, out + first.stderr
    assert "FAILED download@mydata (exit 1)" in out and "see logs/download@mydata.log" in out, out
    assert "no-such-folder" in (project.root / "logs/download@mydata.log").read_text()
    assert set(started(out)) == {"download@digits", "download@mydata"}, out  # no new stage after the failure
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"download@digits"}  # the one that finished is recorded, the failed one is not

    # 2. fixed, run again and interrupted (Ctrl-C) once a training runs: it stops, nothing of it is recorded
    params = project.root / "params.yaml"
    params.write_text(params.read_text().replace("data/fixtures/no-such-folder", "data/fixtures/photos"))
    proc = subprocess.Popen([VITFGVC, "repro", "--jobs", "2"], cwd=project.root, env=project.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"\] start (baseline|multistage)@", line) or time.time() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "interrupted: stopped " in out, out
    interrupted = re.search(r"interrupted: stopped ([^;]+);", out).group(1).split(", ")
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]
    assert not set(interrupted) & set(lock), (interrupted, set(lock))
    assert stage_processes(project.root) == []  # the interrupted stages' processes are gone

    # 3. the same command again completes: what ran before is not run again, and the outcome is dvc repro's
    last = vitfgvc_repro(project, "--jobs", "2")
    assert last.returncode == 0, last.stdout + last.stderr
    assert "download@digits" not in started(last.stdout)
    assert compare(sequential.root, project.root) == []
    assert_up_to_date(project)
    again = vitfgvc_repro(project, "--jobs", "2")
    assert started(again.stdout) == [] and "15 unchanged" in again.stdout


def test_two_ray_nodes_and_an_mlflow_server_end_as_dvc_repro(sequential, tmp_path):
    from ray.cluster_utils import Cluster

    project = sub_dag(tmp_path / "cluster")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with mlflow_server(tmp_path / "server.db", project.env) as uri:
            proc = vitfgvc_repro(project, "--jobs", "2", "--address", cluster.address,
                                 env={"MLFLOW_TRACKING_URI": uri})
    finally:
        cluster.shutdown()
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "on 2 Ray nodes" in out
    nodes = set(re.findall(r"\] done \S+ in [\d.]+ s on 127\.0\.0\.1 \(node (\w+)\)", out))
    assert len(nodes) == 2, out  # both nodes ran stages
    assert_up_to_date(sequential)
    assert not (project.root / "mlflow.db").exists()  # every run went to the server
    assert compare(sequential.root, project.root, mlflow_b=f"sqlite:///{tmp_path / 'server.db'}") == []
    assert_up_to_date(project)
