"""`vitfgvc predict`: a trained model on a user's own images, with the attention explanation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitfgvc.cli import main as cli_main

from .conftest import subprocess_env, train_in_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(workspace, tmp_path_factory):
    import torch

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    out = tmp_path_factory.mktemp("predict")
    _, paths, _ = train_in_process(workspace, out, "dogs", "multistage")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    return paths


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitfgvc.cli", *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)


def test_predictions_equal_the_evaluation(trained):
    evaluation = pd.read_csv(trained.model_dir.parents[2] / "evaluation/dogs/multistage/predictions.csv")
    images = [str(trained.data / p) for p in evaluation["image"]]
    classes = len(pd.read_csv(trained.model_dir / "classes.csv"))
    # every class listed, so that each stage's own best class is among them
    proc = run_cli("predict", str(trained.model_dir), *images, "--json", "--top-k", str(classes))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["image"] for r in results] == images
    for r, (_, row) in zip(results, evaluation.iterrows()):
        assert r["top_k"][0]["label"] == row["pred_combined"]
        assert r["top_k"][0]["prob"] == pytest.approx(row["prob_combined"], abs=1e-5)
        for stage in ("a", "b", "c"):
            assert len(r["stages"][stage]) == classes
            best = max(r["stages"][stage], key=lambda t: t["prob"])
            assert best["label"] == row[f"pred_{stage}"], (r["image"], stage)
            assert best["prob"] == pytest.approx(row[f"prob_{stage}"], abs=1e-5)


def test_json_holds_k_classes_per_image_and_stage(trained):
    folder = trained.data / "images"
    proc = run_cli("predict", str(trained.model_dir), str(folder), "--json", "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(pd.read_csv(trained.data / "manifest.csv"))
    for r in results:
        assert len(r["top_k"]) == 2 and sum(t["prob"] for t in r["top_k"]) <= 1 + 1e-6
        assert r["top_k"][0]["prob"] >= r["top_k"][1]["prob"]
        assert {t["class_name"] for t in r["top_k"]} <= {"Chihuahua", "Japanese_spaniel", "Maltese_dog"}
        assert set(r["stages"]) == {"a", "b", "c"}
        assert all(len(v) == 2 and sum(t["prob"] for t in v) <= 1 + 1e-6 for v in r["stages"].values())


def test_any_mode_format_and_size_folders_globs_and_explain(trained, tmp_path, capsys):
    src = Image.open(next((trained.data / "images").rglob("*.jpg"))).convert("RGB")
    (tmp_path / "in" / "sub").mkdir(parents=True)
    src.convert("RGBA").save(tmp_path / "in/rgba.png")
    src.convert("P").save(tmp_path / "in/palette.png")
    src.convert("L").resize((500, 90)).save(tmp_path / "in/sub/gray.webp")
    src.convert("CMYK").save(tmp_path / "in/sub/cmyk.jpg")
    src.resize((7, 300)).save(tmp_path / "tall.jpg")
    code = cli_main(["predict", str(trained.model_dir), str(tmp_path / "in"), str(tmp_path / "*.jpg"),
                     "--explain", str(tmp_path / "why"), "--top-k", "3"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("rgba.png", "palette.png", "gray.webp", "cmyk.jpg", "tall.jpg"):
        assert name in out
    assert "combined" in out and "b (object)" in out and "c (parts)" in out
    pngs = sorted(p.name for p in (tmp_path / "why").iterdir())
    assert pngs == ["cmyk.png", "gray.png", "palette.png", "rgba.png", "tall.png"]
    with Image.open(tmp_path / "why/gray.png") as im:
        im.load()
        assert im.size[0] > 500 and np.asarray(im).std() > 10  # a real figure, not a blank canvas


def test_unreadable_files_are_reported_and_the_rest_processed(trained, tmp_path):
    good = next((trained.data / "images").rglob("*.jpg"))
    shutil.copy(good, tmp_path / "good.jpg")
    (tmp_path / "notes.jpg").write_text("this is a text file named .jpg")
    (tmp_path / "broken.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    proc = run_cli("predict", str(trained.model_dir), str(tmp_path / "notes.jpg"), str(tmp_path / "good.jpg"),
                   str(tmp_path / "broken.jpg"), str(tmp_path / "missing.jpg"), "--json")
    assert proc.returncode == 1
    results = {Path(r["image"]).name: r for r in json.loads(proc.stdout)}
    assert "top_k" in results["good.jpg"]
    assert "not an image format" in results["notes.jpg"]["error"]
    assert "cannot decode" in results["broken.jpg"]["error"]
    assert "no such file" in results["missing.jpg"]["error"]
    for name in ("notes.jpg", "broken.jpg", "missing.jpg"):
        assert f"{name}: " in proc.stderr


def test_a_decompression_bomb_is_reported_and_the_other_images_classified(trained, tmp_path):
    """A 20000 x 20000 PNG (a real one, a few hundred KB) beside a photo: the bomb is refused by name, the photo classified."""
    Image.new("1", (20_000, 20_000)).save(tmp_path / "huge.png")
    shutil.copy(next((trained.data / "images").rglob("*.jpg")), tmp_path / "other.jpg")
    proc = run_cli("predict", str(trained.model_dir), str(tmp_path / "huge.png"), str(tmp_path / "other.jpg"), "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    results = {Path(r["image"]).name: r for r in json.loads(proc.stdout)}
    assert "top_k" in results["other.jpg"]
    assert "20000x20000 = 400,000,000 pixels, more than the limit of 89,478,485" in results["huge.png"]["error"]
    raised = run_cli("predict", str(trained.model_dir), str(tmp_path / "other.jpg"), "--max-pixels", "100")
    assert raised.returncode == 1 and "more than the limit of 100" in raised.stderr


def test_predict_reports_or_classifies_every_file_of_a_hostile_corpus(trained, tmp_path):
    from vitfgvc.cli import predict

    from .fixtures.corpus import write_corpus

    samples = write_corpus(tmp_path / "corpus", 500)
    results = predict(str(trained.model_dir), [str(s.path) for s in samples], top_k=1, progress=False)
    assert [r.image for r in results] == [str(s.path) for s in samples]
    failed = [r for r in results if r.error is not None]
    assert all(r.error for r in failed) and all(len(r.top_k) == 1 for r in results if r.error is None)
    for s, r in zip(samples, results):
        if s.kind.startswith("valid:"):
            assert r.error is None, (s.kind, r.error)
        if s.kind.startswith(("huge_", "zero_bytes", "not_an_image")):
            assert r.error, s.kind
    assert len(failed) > 100 and len(results) - len(failed) > 100


def test_a_baseline_directory_predicts_its_one_stage(workspace, tmp_path, torch_state, capsys):
    _, paths, _ = train_in_process(workspace, tmp_path, "digits", "baseline")
    evaluation = pd.read_csv(tmp_path / "evaluation/digits/baseline/predictions.csv").head(3)
    images = [str(workspace / "data/prepared/digits" / p) for p in evaluation["image"]]
    capsys.readouterr()
    code = cli_main(["predict", str(paths.model_dir), *images, "--json", "--top-k", "10"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == images
    for r, (_, row) in zip(results, evaluation.iterrows()):
        assert set(r["stages"]) == {"a"}  # the baseline has the full-image stage only
        assert len(r["top_k"]) == 10 and sum(t["prob"] for t in r["top_k"]) == pytest.approx(1.0, abs=1e-4)
        assert r["top_k"][0]["label"] == row["pred_combined"] == row["pred_a"]
        assert r["top_k"][0]["prob"] == pytest.approx(row["prob_combined"], abs=1e-5)
        # one stage: the combined prediction is that stage's
        assert [t["prob"] for t in r["stages"]["a"]] == [t["prob"] for t in r["top_k"]]


def test_a_folder_that_is_not_a_model_directory(tmp_path, capsys):
    assert cli_main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "not a trained model directory (missing model.safetensors, config.yaml, classes.csv" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("vitfgvc")
    proc = subprocess.run([str(script), "predict", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--explain" in proc.stdout
