"""The pretraining source and stage at toy size: the fractal generator is seeded, a pretraining writes an
encoder a training loads, and the DAG runs pretrain@ before the trainings that use it (the paper's is unchanged)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vitfgvc.config import FractalConfig, Params
from vitfgvc.data import fractals

from .conftest import ROOT, set_dotted, smoke_params, subprocess_env

TOY = FractalConfig(classes=3, train=6, test=1, points=2000, object_size=[16, 28])


def test_the_generator_is_seeded_and_balanced():
    codes = fractals.category_codes(TOY, seed=0)
    again = fractals.category_codes(TOY, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(codes, again))
    assert not np.array_equal(codes[0], fractals.category_codes(TOY, seed=1)[0])
    assert all(fractals.filling_rate(fractals.chaos_game(c, np.random.default_rng(0), TOY.points)) >= TOY.fill_rate / 2
               for c in codes)
    one = fractals.render(codes, "train", 4, 32, TOY, 0)
    img, label, box = one
    same = fractals.render(codes, "train", 4, 32, TOY, 0)
    assert np.array_equal(img, same[0]) and (label, box) == same[1:]
    assert not np.array_equal(img, fractals.render(codes, "test", 4, 32, TOY, 0)[0])  # splits draw apart
    assert img.shape == (32, 32) and label == 4 % 3
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 and img[y0:y1, x0:x1].max() > 0
    assert img.sum() == img[y0:y1, x0:x1].sum()  # the box holds all the ink


def test_a_line_fills_nothing_and_too_strict_a_filter_says_so():
    line = np.array([[0.5, 0, 0, 0.0, 0.5, 0], [0.5, 0, 0, 0.0, 0, 0]])  # both maps squash y to 0: a segment
    assert fractals.filling_rate(fractals.chaos_game(line, np.random.default_rng(0), 2000)) < 0.1
    with pytest.raises(ValueError, match="lower fill_rate"):
        fractals.category_codes(FractalConfig(classes=2, fill_rate=0.99, points=400), 0, max_draws=50)


def _toy_params() -> dict:
    data = smoke_params(**{"pipeline.datasets": ["digits"], "pipeline.equal_time": [], "ablation.datasets": [],
                           "pipeline.pretrain": ["fractals"], "pipeline.encoder": "models/pretrain/fractals",
                           "model.weights": "models/pretrain/fractals/encoder.safetensors",
                           "runtime.nproc": 1, "runtime.workers": 0, "runtime.threads": 1, "train.eval_every": 1})
    data["datasets"]["fractals"] = {"format": "fractals", "high_res": 32, "val_fraction": 0.25,
                                    "fractal": TOY.model_dump(), "train": {"epochs_frozen": 0, "epochs": 1}}
    return data


def test_a_pretraining_writes_an_encoder_that_a_training_loads(tmp_path, monkeypatch, torch_state):
    from vitfgvc.data.prepare import prepare
    from vitfgvc.multistage import build
    from vitfgvc.pretrain import ENCODER, pretrain

    params = Params.model_validate(_toy_params())
    monkeypatch.chdir(tmp_path)
    summary = prepare("fractals", params, "data/raw/fractals", "data/prepared/fractals", progress=False)
    assert (summary["classes"], summary["train"] + summary["val"], summary["test"]) == (3, 18, 3)
    table = pd.read_csv("data/prepared/fractals/manifest.csv")
    assert table["x0"].notna().all() and set(table["class_name"]) == set(fractals.class_names(3))
    record = pretrain(params, "fractals", progress=False)
    assert (record["classes"], record["epochs"]) == (3, 1) and record["train_flops"] > 0
    assert record["train_images"] + record["val_images"] == 18
    encoder = load_file(f"models/pretrain/fractals/{ENCODER}")
    assert encoder and not any(k.startswith(("encoder.", "head")) for k in encoder)
    # a digits training starts from it: every encoder tensor but the re-initialised final norm (final_norm: fresh)
    net = build(params.run_config("digits", "baseline"), 10).net
    state = net.encoder.state_dict()
    assert set(state) == set(encoder)
    fresh = {k for k in encoder if k.startswith("norm.")}
    assert fresh and all(torch.equal(state[k], encoder[k]) for k in set(encoder) - fresh)
    scratch = build(params.run_config("digits", "baseline").model_copy(
        update={"backbone": params.model.model_copy(update={"weights": None})}), 10).net.encoder.state_dict()
    assert not torch.equal(scratch["patch_embed.proj.weight"], encoder["patch_embed.proj.weight"])


def test_the_encoder_named_by_a_training_must_come_from_a_listed_pretraining():
    data = _toy_params()
    with pytest.raises(ValueError, match="pipeline.encoder must be 'models/pretrain/fractals'"):
        Params.model_validate(set_dotted(data, **{"pipeline.encoder": "src/vitfgvc/model.py"}))
    with pytest.raises(ValueError, match="with <source> in pipeline.pretrain"):
        Params.model_validate(set_dotted(_toy_params(), **{"pipeline.pretrain": []}))
    with pytest.raises(ValueError, match="a pretraining source"):
        Params.model_validate(set_dotted(_toy_params(), **{"pipeline.datasets": ["digits", "fractals"]}))


def _dry_stages(tmp_path, profile: str) -> list[str]:
    """The stages ``dvc repro --dry -f`` would run in a fresh copy of the project with ``profile``."""
    from benchmarks.profiles import PROFILES, Profile, sync

    dest = tmp_path / profile
    sync(dest, Profile(profile, "dry run"), subprocess_env())
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--dry", "-f"], cwd=dest, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.rmtree(dest)
    assert PROFILES
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


def test_the_study_profile_pretrains_before_its_trainings_and_the_paper_profile_has_no_pretraining(tmp_path):
    order = _dry_stages(tmp_path, "params-pretrained.yaml")
    trainings = [s for s in order if s.split("@")[0] in ("baseline", "multistage", "baseline_equal_time", "ablate")]
    assert trainings and order.index("generate@fractals") < order.index("pretrain@fractals") < min(
        order.index(s) for s in trainings)
    paper = _dry_stages(tmp_path, "params.yaml")
    assert not [s for s in paper if s.startswith(("generate@", "pretrain@"))]
    expected = yaml.safe_load((ROOT / "params.yaml").read_text())["pipeline"]["datasets"]
    assert {s.split("@")[1] for s in paper if s.startswith("baseline@")} == set(expected)


@pytest.mark.slow
def test_a_pretraining_killed_anywhere_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, torch_state):
    from benchmarks.outcome import digest

    from .test_kill import KILLS, _import_the_stages, _run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _import_the_stages()
    import vitfgvc.pretrain  # noqa: F401  (imported before the forks, as the other stages' modules)

    data = set_dotted(_toy_params(), **{"runtime.ckpt_every": 1, "runtime.prepare_workers": 1})
    data["datasets"]["fractals"]["train"]["epochs"] = 2
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for project in (whole, killed):
        project.mkdir()
        (project / "params.yaml").write_text(yaml.safe_dump(data))
    stages = [("prepare.py", ("--dataset", "fractals"), ["data/prepared/fractals", "metrics/prepare/fractals.json"]),
              ("pretrain.py", ("--source", "fractals"), ["models/pretrain/fractals", "metrics/pretrain/fractals.json",
                                                         "metrics/pretrain/fractals_history.csv"])]
    rng = np.random.default_rng(29)
    for script, args, outputs in stages:
        start = time.perf_counter()
        assert _run(whole, script, *args) == "finished"
        seconds = time.perf_counter() - start
        reference = {o: digest(whole / o) for o in outputs}
        for delay in sorted(rng.uniform(0.05, 0.95, KILLS) * seconds):
            _run(killed, script, *args, kill_after=float(delay))
            for o in outputs:  # absent or whole, never half-written
                assert digest(killed / o) in ({}, reference[o]), f"{script} killed after {delay:.2f} s: partial {o}"
        assert _run(killed, script, *args) == "finished"
        for o in outputs:
            assert digest(killed / o) == reference[o], f"{script}: {o} differs from the uninterrupted run"
    assert (killed / "models/pretrain/fractals/encoder.safetensors").exists()
