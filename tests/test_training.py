"""Training: both models on the smoke profile, MLflow records, determinism, resume, NaN stop, DDP."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from benchmarks.learning_spread import BOUNDS, digits_attention, wrong_boxes
from vitfgvc.inference import read_training
from vitfgvc.training import NonFiniteLossError, counting_flops

from .conftest import ROOT, set_dotted, subprocess_env, train_in_process

pytestmark = pytest.mark.slow
TIMING = {"train_seconds", "seconds_per_epoch", "train_images_per_s", "peak_memory_mib"}  # measurements


def write_params(folder: Path, data: dict, **dotted) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(set_dotted(data, **dotted)))
    return path


def stage_process(cwd: Path, params: Path, dataset: str, model: str, env=None, *extra: str) -> subprocess.Popen:
    """``stages/train.py`` in ``cwd`` (which links ``data/`` to the prepared workspace)."""
    return subprocess.Popen([sys.executable, str(ROOT / "stages/train.py"), "--dataset", dataset, "--model", model,
                             "--params", str(params), *extra], cwd=cwd, env=env or subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def evaluate_stage(cwd: Path, params: Path, dataset: str, run: str, env=None) -> dict:
    """``stages/evaluate.py`` in ``cwd`` on a model a training stage wrote there; returns its metrics."""
    proc = subprocess.run([sys.executable, str(ROOT / "stages/evaluate.py"), "--dataset", dataset, "--run", run,
                           "--params", str(params)], cwd=cwd, env=env or subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / f"metrics/{dataset}/{run}.json").read_text())


def outcome(folder: Path, dataset: str, model: str) -> tuple[dict, dict]:
    """A training's summary and its record (without its timings and MLflow run), and its weights."""
    summary = read_training(folder / f"models/{dataset}/{model}", folder / f"metrics/{dataset}/{model}_training.json")
    weights = load_file(str(folder / f"models/{dataset}/{model}/model.safetensors"))
    return {k: v for k, v in summary.items() if k not in TIMING | {"mlflow_run_id"}}, weights


# ------------------------------------------------------------------------ tests
def test_both_models_train_evaluate_and_log_to_mlflow(workspace, tmp_path, torch_state):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = {}
    for model in ("baseline", "multistage"):
        _, paths, results[model] = train_in_process(workspace, tmp_path, "dogs", model, uri=uri)
        history = pd.read_csv(paths.history)
        assert history["epoch"].tolist() == [1, 2] and history["phase"].tolist() == ["frozen", "unfrozen"]
        # training writes the model directory; the evaluation its own folder and the metrics
        assert {p.name for p in paths.model_dir.iterdir()} == {"model.safetensors", "config.yaml", "classes.csv",
                                                                "training.json"}
        evaluation = tmp_path / "evaluation/dogs" / model
        assert {p.name for p in evaluation.iterdir()} == {"predictions.csv", "per_class.csv", "confusion.csv",
                                                          "confusion.png", "attention.png"}
        assert json.loads((tmp_path / f"metrics/dogs/{model}.json").read_text()) == results[model]
        predictions = pd.read_csv(evaluation / "predictions.csv")
        assert len(predictions) == results[model]["images"] == 12
        # every accuracy is the one predictions.csv gives, recomputed
        stages = ["combined", "a"] + (["b", "c"] if model == "multistage" else [])
        for stage in stages:
            key = "accuracy" if stage == "combined" else f"accuracy_{stage}"
            hits = (predictions[f"pred_{stage}"] == predictions["label"]).mean()
            assert results[model][key] == pytest.approx(100 * hits, abs=1e-3), (model, key)
        assert not paths.checkpoints.exists()  # cleared once the run is complete
    multi = results["multistage"]
    assert 0 <= multi["box_iou"] <= 1 and 0 <= multi["box_recall"] <= 1
    assert "accuracy_b" not in results["baseline"] and "box_iou" not in results["baseline"]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("vitfgvc")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"dogs/baseline", "dogs/multistage"}
    run = runs["dogs/multistage"]
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("dataset", "model", "dvc_stage")} == {
        "dataset": "dogs", "model": "multistage", "dvc_stage": "multistage@dogs"}
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    assert run.data.params["train.lr"] == str(params["train"]["lr"])
    assert run.data.params["aug.erase_p"] == str(params["aug"]["erase_p"])
    assert run.data.params["multistage.part_pool"] == "avg"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == pytest.approx(multi["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "confusion.png", "attention.png"} <= artifacts
    assert "aug.erase_p" not in runs["dogs/baseline"].data.params  # the baseline reads no aug


def test_same_params_and_seed_give_the_same_metrics(workspace, tmp_path, torch_state):
    _, a, _ = train_in_process(workspace, tmp_path / "a", "digits", "multistage")
    _, b, _ = train_in_process(workspace, tmp_path / "b", "digits", "multistage")
    (ma, wa), (mb, wb) = outcome(tmp_path / "a", "digits", "multistage"), outcome(tmp_path / "b", "digits",
                                                                                 "multistage")
    assert ma == mb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the model directory holds results only (its measurements are in the record beside the history): the same
    # training writes the same bytes, so DVC gives it the same hash
    files = sorted(p.name for p in a.model_dir.iterdir())
    assert files == sorted(p.name for p in b.model_dir.iterdir())
    assert all((a.model_dir / f).read_bytes() == (b.model_dir / f).read_bytes() for f in files)
    _, c, _ = train_in_process(workspace, tmp_path / "c", "digits", "multistage", seed=1)
    assert outcome(tmp_path / "c", "digits", "multistage")[0] != ma


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(workspace, tmp_path, torch_state):
    with pytest.raises(NonFiniteLossError) as err:
        train_in_process(workspace, tmp_path, "digits", "baseline", **{"train.lr_frozen": 1.0e+30,
                                                                 "runtime.ckpt_every": 1})
    message = str(err.value)
    assert "the loss became nan" in message.lower() or "the loss became inf" in message.lower()
    ckpt = tmp_path / "checkpoints/digits/baseline/last.pt"
    assert ckpt.exists() and str(ckpt) in message
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 0 and state["step"] >= 1
    assert not (tmp_path / "models/digits/baseline").exists()


def test_a_killed_run_resumes_and_ends_exactly_like_an_uninterrupted_one(workspace, tmp_path):
    data = yaml.safe_load((workspace / "params.yaml").read_text())
    # three phases (frozen, unfrozen, final): the kill lands after the first, the resume crosses into the last
    params = write_params(tmp_path / "cfg", data, **{"runtime.ckpt_every": 3, "train.epochs": 2,
                                                     "train.epochs_final": 1})
    for folder in ("whole", "killed"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data").symlink_to(workspace / "data")
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    whole = stage_process(tmp_path / "whole", params, "digits", "multistage", env)
    assert whole.wait(timeout=600) == 0, whole.communicate()[1][-3000:]

    ckpt = tmp_path / "killed/checkpoints/digits/multistage/last.pt"
    proc = stage_process(tmp_path / "killed", params, "digits", "multistage", env)
    seen = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=False)  # a complete file: writes are atomic
            if state["epoch"] >= 1 and state["step"] > 0:  # mid-epoch, after a whole epoch
                seen = (state["epoch"], state["step"])
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert seen is not None and proc.returncode == -signal.SIGKILL, "the run was not killed mid-way"
    assert not (tmp_path / "killed/models/digits/multistage").exists()

    resumed = stage_process(tmp_path / "killed", params, "digits", "multistage", env)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resuming from" in out + err
    (m1, w1), (m2, w2) = outcome(tmp_path / "whole", "digits", "multistage"), outcome(tmp_path / "killed", "digits",
                                                                                     "multistage")
    assert m2 == m1
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    measured = ["seconds", "cum_seconds", "seconds_per_step", "data_seconds", "optimizer_seconds", "images_per_s",
                "peak_memory_mib"]
    h1 = pd.read_csv(tmp_path / "whole/metrics/digits/multistage_history.csv").drop(columns=measured)
    h2 = pd.read_csv(tmp_path / "killed/metrics/digits/multistage_history.csv").drop(columns=measured)
    pd.testing.assert_frame_equal(h1, h2)


def test_ddp_with_two_gloo_processes_matches_one_process(workspace, tmp_path):
    data = yaml.safe_load((workspace / "params.yaml").read_text())
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", OMP_NUM_THREADS="1")
    results = {}
    for nproc in (1, 2):
        folder = tmp_path / f"n{nproc}"
        # crop_aug and the random fallback read per-sample draws: the same whatever the number of processes
        # (a high crop threshold: the young model's maps are flat, within ~2 % of their max)
        params = write_params(folder / "cfg", data, **{"runtime.nproc": nproc, "train.batch_size": 8,
                                                       "aug.crop_p": 0.5, "aug.crop_threshold": [0.95, 1.0],
                                                       "multistage.fallback": "random"})
        (folder / "data").symlink_to(workspace / "data")
        proc = stage_process(folder, params, "digits", "multistage", env)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        metrics = evaluate_stage(folder, params, "digits", "multistage", env)
        summary, weights = outcome(folder, "digits", "multistage")
        results[nproc] = {**summary, **metrics}, weights
    (m1, w1), (m2, w2) = results[1], results[2]
    # two code paths on the same inputs (1 and 2 processes), not learning: the same global batches and per-sample
    # augmentation, only the order of float sums differs (weights ~1e-8 apart; with crop thresholds drawn per step
    # instead of per sample they were 2e-5 apart)
    assert m2["final_train_loss"] == pytest.approx(m1["final_train_loss"], rel=1e-6)
    assert m2["train_flops"] == m1["train_flops"] > 0  # each process counts its shard; the sum is the same
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    for key in ("accuracy", "accuracy_a", "accuracy_b", "accuracy_c", "box_iou"):
        assert m2[key] == pytest.approx(m1[key], abs=2.1), key  # at most one of 48 test images flips


def test_one_training_over_two_nodes_matches_one_process(workspace, tmp_path):
    """runtime.nnodes 2: two launches of the same stage command (two "nodes" on loopback) meet at torchrun's c10d
    rendezvous and train one model; only global rank 0 writes. It equals a one-process training of the same global
    batches to the tolerance of the DDP test above (two code paths on the same inputs, not learning)."""
    import socket

    data = yaml.safe_load((workspace / "params.yaml").read_text())
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", OMP_NUM_THREADS="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = {}
    for nodes in (1, 2):
        folder = tmp_path / f"nodes{nodes}"
        extra = {"runtime.nnodes": 2, "runtime.rdzv_endpoint": f"127.0.0.1:{port}"} if nodes == 2 else {}
        params = write_params(folder / "cfg", data, **{"train.batch_size": 8, **extra})
        (folder / "data").symlink_to(workspace / "data")
        procs = [stage_process(folder, params, "digits", "multistage", env) for _ in range(nodes)]
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-4000:]
        metrics = evaluate_stage(folder, params, "digits", "multistage", env)
        summary, weights = outcome(folder, "digits", "multistage")
        results[nodes] = {**summary, **metrics}, weights
    (m1, w1), (m2, w2) = results[1], results[2]
    assert m2["processes"] == 2 and m1["processes"] == 1  # the two launches were one training of two processes
    assert m2["final_train_loss"] == pytest.approx(m1["final_train_loss"], rel=1e-6)
    assert m2["train_flops"] == m1["train_flops"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    for key in ("accuracy", "accuracy_a", "accuracy_b", "accuracy_c"):
        assert m2[key] == pytest.approx(m1[key], abs=2.1), key  # at most one of 48 test images flips


def test_two_concurrent_trainings_are_both_recorded(workspace, tmp_path):
    from mlflow import MlflowClient

    data = yaml.safe_load((workspace / "params.yaml").read_text())
    params = write_params(tmp_path / "cfg", data)
    (tmp_path / "data").symlink_to(workspace / "data")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # the project root, where the default store lives
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [stage_process(tmp_path, params, "digits", m, env) for m in ("baseline", "multistage")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vitfgvc").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["digits/baseline", "digits/multistage"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert (tmp_path / "mlartifacts").is_dir()


def test_digits_attention_finds_the_digit(tmp_path):
    """A small ViT from scratch on CPU: its attention's object box lands on the digit, accuracy far above chance.

    A learning test: the training is benchmarks/learning_spread.py's, whose report (reports/learning-spread.md)
    gives the spread each bound was set against, over seeds, torch threads, oneDNN and instruction sets."""
    result = digits_attention(tmp_path)
    print(f"\ndigits: accuracy {result['accuracy']} (a {result['accuracy_a']}, b {result['accuracy_b']}, "
          f"c {result['accuracy_c']}); box IoU {result['box_iou']}, IoU >= 0.5 for {result['box_iou50']:.0%}, "
          f"box recall {result['box_recall']}")
    # learning (15 runs over seeds, threads, oneDNN, instruction sets: reports/learning-spread.md)
    assert result["accuracy"] > BOUNDS["accuracy"]  # 15 runs: 57.0-69.3 %; bound 35 (chance: 10)
    assert result["box_iou50"] > BOUNDS["box_iou50"]  # 15 runs: 0.667-0.827; bound 0.4
    assert result["box_recall"] > BOUNDS["box_recall"]  # 15 runs: 0.743-0.900; bound 0.5
    # the bounds have teeth (deterministic given the run: the same boxes made wrong on purpose): moved by two
    # patches of the 8x8 grid they fail both box bounds (15 runs: at most 0.010 and 0.023), and the whole canvas,
    # a localisation that never finds anything, covers every digit but fails the IoU bound (0 in every run)
    wrong = wrong_boxes(tmp_path)
    assert wrong["shifted"]["box_iou50"] <= BOUNDS["box_iou50"] and wrong["shifted"]["box_recall"] <= BOUNDS[
        "box_recall"], wrong
    assert wrong["full"]["box_iou50"] <= BOUNDS["box_iou50"], wrong


# ------------------------------------------------------------------------ compute accounting
def test_flops_of_a_linear_layer_and_of_cpu_attention_forward_and_backward():
    x = torch.randn(2, 4, requires_grad=True)
    layer = torch.nn.Linear(4, 3)
    counts = {}
    with counting_flops(counts, "linear"):
        layer(x).sum().backward()
    assert counts["linear"] == 3 * (2 * 2 * 4 * 3)  # forward, and the gradients of the input and the weight
    q, k, v = (torch.randn(1, 2, 5, 4, requires_grad=True) for _ in range(3))
    with counting_flops(counts, "attention"):  # the CPU's flash kernel, absent from torch's own registry
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
    forward = 2 * (2 * 1 * 2 * 5 * 5 * 4)  # q @ k^T and attn @ v
    assert counts["attention"] == forward + int(2.5 * forward)  # backward: torch's formula for fused attention


def test_history_counts_flops_and_seconds_and_validates_first_every_eval_every_and_last_epochs(workspace, tmp_path, torch_state):
    # a validation split: every fifth training image of the prepared digits becomes "val"
    ws = tmp_path / "ws"
    shutil.copytree(workspace / "data/prepared/digits", ws / "data/prepared/digits")
    shutil.copy(workspace / "params.yaml", ws / "params.yaml")
    manifest = pd.read_csv(ws / "data/prepared/digits/manifest.csv")
    train_rows = manifest.index[manifest["split"] == "train"]
    manifest.loc[train_rows[::5], "split"] = "val"
    manifest.to_csv(ws / "data/prepared/digits/manifest.csv", index=False)
    _, paths, metrics = train_in_process(ws, tmp_path / "out", "digits", "multistage",
                                         **{"train.epochs_frozen": 1, "train.epochs": 3, "train.eval_every": 3})
    h = pd.read_csv(paths.history)
    assert h["epoch"].tolist() == [1, 2, 3, 4]
    assert (h["flops"] > 0).all() and h["cum_flops"].tolist() == h["flops"].cumsum().tolist()
    assert h["cum_seconds"].tolist() == pytest.approx(h["seconds"].cumsum().tolist(), abs=2e-3)
    # the frozen phase's backward stops at the final norm: fewer FLOPs than an epoch training every layer
    assert h["flops"][0] < h["flops"][1] == h["flops"][2] == h["flops"][3]
    # validated after epoch 1 (the first), 3 (every 3rd) and 4 (the last), not 2; every stage, and the multistage
    # model's object box against the true boxes
    for column in ("val_accuracy", "val_accuracy_a", "val_accuracy_b", "val_accuracy_c", "val_box_iou",
                   "val_box_iou50", "val_box_recall"):
        assert h[column].isna().tolist() == [False, True, False, False], column
    assert h["val_box_iou"].between(0, 1).iloc[[0, 2, 3]].all()
    summary = json.loads((paths.model_dir / "training.json").read_text())
    # and once before the first step: what the start weights do
    before = summary["val_before_training"]
    assert {"val_accuracy", "val_accuracy_c", "val_box_iou", "val_box_recall"} <= set(before)
    assert 0 <= before["val_box_iou"] <= 1
    assert summary["train_flops"] == metrics["train_flops"] == h["flops"].sum()
