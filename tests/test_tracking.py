"""MLflow tracking as the UI reads it: experiment kind, run source, dataset inputs, one run per model.

Tracker is driven directly on a throw-away store (no training); what the UI shows is
read back through the REST endpoints its pages call, from a real ``mlflow server``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import subprocess_env
from .pipeline import mlflow_server

MANIFEST = """\
image,label,class_name,split,x0,y0,x1,y1,source,width,height
images/beagle/1.jpg,0,beagle,train,4,6,50,40,stanford,64,48
images/pug/2.jpg,1,pug,train,,,,,stanford,64,48
images/pug/3.jpg,1,pug,train,2,3,30,31,stanford,64,48
images/beagle/4.jpg,0,beagle,test,1,1,60,44,stanford,64,48
images/pug/5.jpg,1,pug,test,5,5,40,40,stanford,64,48
"""


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, env=subprocess_env(), check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture()
def project(tmp_path) -> Path:
    """A committed project with one prepared dataset (``dogs``): the tracking store's root."""
    root = tmp_path / "project"
    prepared = root / "data/prepared/dogs"
    prepared.mkdir(parents=True)
    (prepared / "manifest.csv").write_text(MANIFEST)
    (prepared / "classes.csv").write_text("label,class_name\n0,beagle\n1,pug\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "project")
    return root


def tracker(root: Path):
    from vitfgvc.tracking import Tracker

    return Tracker("vitfgvc", root=root)


def train(root: Path, model: str) -> str:
    """What a training stage logs: tags, params, its data, per-epoch metrics; it finishes its part."""
    t = tracker(root)
    run_id = t.start(f"dogs/{model}", tags={"dataset": "dogs", "model": model, "variant": "",
                                            "dvc_stage": f"{model}@dogs"},
                     params={"train": {"lr": 1e-4, "epochs": 2}, "model": model}, source=f"{model}@dogs")
    t.log_data(root / "data/prepared/dogs/manifest.csv", "dogs", splits=["train", "val"])
    for epoch in (1, 2):
        t.log_metrics({"train_loss": 1.0 / epoch, "train_acc": 40.0 + 10 * epoch}, step=epoch)
    t.finish("FINISHED")
    return run_id


def evaluate(root: Path, run_id: str, accuracy: float) -> None:
    """What the evaluation stage logs, from another Tracker: the test data and metrics, into the same run."""
    t = tracker(root)
    assert t.attach(run_id, tags={"dvc_eval_stage": "evaluate@dogs"}) == run_id
    t.log_data(root / "data/prepared/dogs/manifest.csv", "dogs", splits=["test"])
    t.log_metrics({"test_accuracy": accuracy}, step=2)
    t.finish("FINISHED")


class Server:
    """What the MLflow UI asks an ``mlflow server`` (its ``ajax-api`` routes) at ``base``."""

    def __init__(self, base: str):
        self.base = base

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.base}/ajax-api/2.0/mlflow/{path}", timeout=30) as r:
            return json.load(r)

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.base}/ajax-api/2.0/mlflow/{path}", method="POST",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.load(r)


def tags_of(entity: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entity.get("tags", [])}


def test_the_ui_sees_a_training_experiment_run_sources_datasets_and_one_run_per_model(project):
    runs_made = {model: train(project, model) for model in ("baseline", "multistage")}
    evaluate(project, runs_made["multistage"], 87.5)
    evaluate(project, runs_made["baseline"], 75.0)
    commit = git(project, "rev-parse", "HEAD")

    with mlflow_server(project / "mlflow.db", subprocess_env()) as base:
        server = Server(base)
        experiment = server.get("experiments/get-by-name?experiment_name=vitfgvc")["experiment"]
        runs = server.post("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100,
                                           "order_by": ["attributes.start_time ASC"]})["runs"]
        run_page = server.get(f"runs/get?run_id={runs_made['multistage']}")["run"]
        history = server.get(f"metrics/get-history?run_id={runs_made['multistage']}&metric_key=train_loss")

    # the experiment is a model-training one: the UI does not treat it as a GenAI app's traces
    assert tags_of(experiment)["mlflow.experimentKind"] == "custom_model_development"

    assert [r["info"]["run_id"] for r in runs] == list(runs_made.values())  # one run per model, no more
    digests = []
    for run, model in zip(runs, runs_made):
        tags = tags_of(run["data"])
        # the Source column: the DVC stage that reproduces the run, at the commit it ran from
        assert {k: tags.get(k) for k in ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
                                         "mlflow.source.git.branch")} == {
            "mlflow.source.name": f"{model}@dogs", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": commit, "mlflow.source.git.branch": "main"}
        assert tags["mlflow.user"]
        assert {k: tags[k] for k in ("dataset", "model", "dvc_stage", "dvc_eval_stage", "mlflow.runName")} == {
            "dataset": "dogs", "model": model, "dvc_stage": f"{model}@dogs", "dvc_eval_stage": "evaluate@dogs",
            "mlflow.runName": f"dogs/{model}"}
        # the Dataset column: the manifest's splits, each with the context it was used in (no val split here)
        inputs = {d["dataset"]["name"]: d for d in run["inputs"]["dataset_inputs"]}
        assert set(inputs) == {"dogs-train", "dogs-test"}
        for name, context, rows in (("dogs-train", "training", 3), ("dogs-test", "testing", 2)):
            dataset = inputs[name]["dataset"]
            assert tags_of(inputs[name])["mlflow.data.context"] == context
            assert json.loads(dataset["source"]) == {"uri": "data/prepared/dogs/manifest.csv"}
            assert dataset["source_type"] == "local"
            assert json.loads(dataset["profile"])["num_rows"] == rows
            assert {c["name"] for c in json.loads(dataset["schema"])["mlflow_colspec"]} >= {"image", "label", "split"}
        digests.append({name: inputs[name]["dataset"]["digest"] for name in inputs})
        # training's and evaluation's metrics in the one run, which the evaluation closed
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert set(metrics) == {"train_loss", "train_acc", "test_accuracy"}
        assert run["info"]["status"] == "FINISHED" and run["info"]["end_time"] >= run["info"]["start_time"]
    # the same data, the same datasets: both runs name them with equal digests, train and test differ
    assert digests[0] == digests[1] and len(set(digests[0].values())) == 2
    assert {m["key"]: m["value"] for m in run_page["data"]["metrics"]}["test_accuracy"] == 87.5
    assert [(m["step"], m["value"]) for m in history["metrics"]] == [(1, 1.0), (2, 0.5)]


def test_an_experiment_made_before_gets_the_training_kind_and_a_kind_set_by_hand_stays(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("vitfgvc")
    chosen = client.create_experiment("other", tags={"mlflow.experimentKind": "genai_development"})
    tracker(tmp_path)
    tracker(tmp_path)  # a second Tracker on the same store: nothing changes
    from vitfgvc.tracking import Tracker

    Tracker("other", root=tmp_path)
    assert client.get_experiment(old).tags == {"mlflow.experimentKind": "custom_model_development"}
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_a_killed_training_resumes_its_run_and_a_store_without_it_gets_a_new_one(project):
    from mlflow import MlflowClient

    manifest = project / "data/prepared/dogs/manifest.csv"
    t = tracker(project)
    run_id = t.start("dogs/baseline", tags={"dataset": "dogs"}, params={"lr": 0.1}, source="baseline@dogs")
    t.log_data(manifest, "dogs")
    t.log_metrics({"train_loss": 2.0}, step=1)
    # killed here: no finish; the restarted training names the run from its checkpoint
    again = tracker(project)
    assert again.start("dogs/baseline", tags={"dataset": "dogs"}, params={"lr": 0.1}, run_id=run_id) == run_id
    assert again.log_data(manifest, "dogs") == ["dogs-train", "dogs-test"]
    again.log_metrics({"train_loss": 1.0}, step=2)
    again.finish()
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(d.dataset.name for d in run.inputs.dataset_inputs) == ["dogs-test", "dogs-train"]  # not twice
    assert [m.value for m in client.get_metric_history(run_id, "train_loss")] == [2.0, 1.0]
    assert len(client.search_runs([again.experiment_id])) == 1

    # the run is gone (deleted in the UI, or a fresh store): the training goes on in a new run, not failing
    client.delete_run(run_id)
    fresh = tracker(project).start("dogs/baseline", tags={}, params={}, source="baseline@dogs", run_id=run_id)
    assert fresh != run_id and client.get_run(fresh).data.tags["mlflow.source.name"] == "baseline@dogs"


def test_attaching_to_a_run_the_store_lacks_names_the_run_and_the_store(tmp_path):
    from vitfgvc.tracking import RunNotFound

    with pytest.raises(RunNotFound, match=r"0123456789abcdef0123456789abcdef is not in sqlite:///.*mlflow\.db"):
        tracker(tmp_path).attach("0123456789abcdef0123456789abcdef")


def test_a_split_digest_follows_its_manifest_rows_only(project, tmp_path):
    from vitfgvc.tracking import dataset_inputs

    def digests(manifest: Path) -> dict[str, str]:
        return {i.dataset.name: i.dataset.digest for i in dataset_inputs(manifest, "dogs")}

    first = digests(project / "data/prepared/dogs/manifest.csv")
    copy = tmp_path / "elsewhere/manifest.csv"
    copy.parent.mkdir()
    copy.write_text(MANIFEST)
    assert digests(copy) == first  # the content counts, not where it lies
    copy.write_text(MANIFEST.replace("images/pug/5.jpg,1,pug,test", "images/pug/6.jpg,1,pug,test"))
    changed = digests(copy)
    assert changed["dogs-train"] == first["dogs-train"] and changed["dogs-test"] != first["dogs-test"]


def test_the_store_is_anchored_at_dvc_root_and_concurrent_writers_are_all_recorded(project, tmp_path):
    from mlflow import MlflowClient

    # two processes from a copy of the project (as `dvc exp run --temp` does), a fresh store, no retries
    copy = tmp_path / "copy"
    copy.mkdir()
    script = ("import sys\nfrom vitfgvc.tracking import Tracker\n"
              "for i in range(4):\n"
              "    t = Tracker('vitfgvc')\n"
              "    t.start(f'{sys.argv[1]}/{i}', tags={}, params={'i': i})\n"
              "    t.log_metrics({'x': i}, step=1)\n"
              "    t.finish()\n")
    env = subprocess_env(DVC_ROOT=str(project))
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", script, name], cwd=copy, env=env, stderr=subprocess.PIPE,
                              text=True) for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert not (copy / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vitfgvc")
    assert exp.artifact_location == (project / "mlartifacts").as_uri()
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"{n}/{i}" for n in "ab" for i in range(4)]
    assert all(r.info.status == "FINISHED" for r in runs)
