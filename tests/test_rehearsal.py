"""The rehearsal: the paper profile's stages at full size (ViT-B/16 at 384 px on images of the real sizes),
a step per phase, and the cost it extrapolates; a training that fails names where."""

from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest
import torch
import yaml

from .conftest import ROOT, train_in_process

sys.path.insert(0, str(ROOT))
from benchmarks import rehearsal  # noqa: E402

pytestmark = pytest.mark.slow


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_rehearsal_runs_the_paper_profile_with_only_its_stated_overrides():
    from vitfgvc.config import Params

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    derived = rehearsal.derive_params(base, steps=1, eval_images=4, micro_batch=2, workers=1)
    before, after = _leaves(base), _leaves(derived)
    changed = {k for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>")}
    allowed = re.compile(r"^(runtime\.|model\.pretrained$|report\.dir$|train\.batch_size$|"
                         r"datasets\.\w+\.(path$|urls|kaggle|train\.batch_size$))")
    assert changed and all(allowed.match(k) for k in changed), sorted(k for k in changed if not allowed.match(k))
    assert derived["model"]["name"] == base["model"]["name"] and derived["model"]["img_size"] == 384
    assert derived["pipeline"] == base["pipeline"] and derived["ablation"] == base["ablation"]
    p = Params.model_validate(derived)
    assert p.runtime.limit_steps == 1 and p.runtime.limit_eval == 4
    assert p.run_config("cars", "multistage").high_res == 512  # full-size views stay
    # on a GPU the batches stay the paper's
    gpu = rehearsal.derive_params(base, steps=1, eval_images=4, micro_batch=None, workers=8)
    assert Params.model_validate(gpu).run_config("cub", "baseline").train.batch_size == 20


def test_full_size_stages_take_a_step_per_phase_and_report_their_cost(tmp_path, torch_state):
    """The paper's ViT-B/16 at 384 px (random weights) on Dogs-sized photos: both models train one step per phase,
    evaluate two images, and the report extrapolates the full run (about a minute on 2 cores)."""
    from vitfgvc.config import Params
    from vitfgvc.data.acquire import acquire
    from vitfgvc.data.prepare import prepare
    from vitfgvc.evaluate import evaluate_model
    from vitfgvc.training import RunPaths, train

    from .fixtures.archives import REALISTIC_SIZES, write_dogs

    fx = write_dogs(tmp_path / "fixtures", classes=3, per_class=2, sizes=REALISTIC_SIZES["dogs"])
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["pipeline"]["datasets"] = ["dogs"]
    base["ablation"]["datasets"] = []
    derived = rehearsal.derive_params(base, steps=1, eval_images=2, micro_batch=1, workers=0)
    derived["datasets"]["dogs"]["path"] = str(fx.root)
    derived["runtime"]["threads"] = 2
    params = Params.model_validate(derived)
    acquire("dogs", params.dataset("dogs"), params.runtime.download, tmp_path / "data/raw/dogs", progress=False)
    prepare("dogs", params, tmp_path / "data/raw/dogs", tmp_path / "data/prepared/dogs", progress=False)
    for model in ("baseline", "multistage"):
        cfg = params.run_config("dogs", model)
        assert (cfg.backbone.name, cfg.backbone.img_size, cfg.high_res) == (base["model"]["name"], 384, 448)
        paths = RunPaths.for_run("dogs", model, tmp_path)
        summary = train(cfg, params.runtime, paths, stage=f"{model}@dogs", progress=False)
        assert summary["limit_steps"] == 1 and summary["parameters"] > 80_000_000  # ViT-B
        history = pd.read_csv(paths.history)
        assert list(history["phase"]) == ["frozen", "unfrozen"] and list(history["steps"]) == [1, 1]
        metrics = evaluate_model(paths.model_dir, paths.data, tmp_path / "evaluation/dogs" / model,
                                 tmp_path / f"metrics/dogs/{model}.json", params.runtime)
        assert metrics["images"] == 2 and metrics["rehearsal"] == {"limit_steps": 1, "limit_eval": 2}

    text = rehearsal.report(tmp_path, base, derived, {"prepare@dogs": 5.0}, command="test")
    rows = {r["stage"]: r for r in rehearsal.training_rows(tmp_path, base)}
    assert set(rows) == {"baseline@dogs", "multistage@dogs"}
    for r in rows.values():
        assert set(r["step_s"]) == {"frozen", "unfrozen"} and all(v > 0 for v in r["step_s"].values())
        assert r["batch"] == 16 and r["measured_batch"] == 1 and r["peak_mib"] > 0
        assert r["steps"] == (12000 // 16) * (2 + 4) and r["hours"] > 0
    # four forward-backward passes a step: the multistage step costs more than the baseline's. Counted, not timed
    # (deterministic by construction: one step's seconds swing with whatever else the machine runs; 4.3x counted)
    flops = {m: pd.read_csv(tmp_path / f"metrics/dogs/{m}_history.csv").set_index("phase")["flops"]
             for m in ("baseline", "multistage")}
    assert flops["multistage"]["unfrozen"] > 3 * flops["baseline"]["unfrozen"]
    assert "| baseline@dogs | 384 px (views 448 px) | 16 |" in text and "evaluate of multistage@dogs" in text
    assert "Computed GPU memory at the paper's batches" in text and rehearsal.hours_total(text) > 0
    assert "12000/8580" in text


def test_a_crash_in_a_training_step_names_the_stage_the_batch_and_the_image_size(workspace, tmp_path, torch_state,
                                                                                 monkeypatch):
    import vitfgvc.training as training
    from vitfgvc.training import OutOfMemory

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(training, "loss_of", oom)
    with pytest.raises(OutOfMemory) as err:
        train_in_process(workspace, tmp_path / "oom", "dogs", "multistage")
    msg = str(err.value)
    assert "multistage@dogs: out of memory at epoch 1 (frozen), step 1" in msg
    assert "micro-batch of 4 images of 64x64 px (train.batch_size 4, model input 32 px)" in msg
    assert "runtime.accum_steps" in msg
    assert not (tmp_path / "oom/models").exists() and not (tmp_path / "oom/metrics").exists()

    def broken(*_a, **_k):
        raise ValueError("shape mismatch")

    monkeypatch.setattr(training, "loss_of", broken)
    with pytest.raises(ValueError) as err:
        train_in_process(workspace, tmp_path / "crash", "dogs", "baseline")
    assert any("baseline@dogs: raised at epoch 1 (frozen), step 1, micro-batch of 4 images of 64x64 px" in n
               for n in err.value.__notes__)
    assert not (tmp_path / "crash/models").exists()


def test_the_report_reads_a_rehearsal_folder(tmp_path):
    """The report's arithmetic on a hand-made stage output: seconds per image scale to the paper's batch."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["pipeline"]["datasets"], base["ablation"]["datasets"] = ["cub"], []
    derived = rehearsal.derive_params(base, steps=1, eval_images=4, micro_batch=2, workers=1)
    folder = tmp_path / "models/cub/baseline"
    folder.mkdir(parents=True)
    (folder / "training.json").write_text(json.dumps({"batch_size": 2, "parameters": 86_000_000}))
    (tmp_path / "metrics/cub").mkdir(parents=True)
    (tmp_path / "metrics/cub/baseline_training.json").write_text(json.dumps({
        "micro_batch": 2, "peak_memory_mib": 4096.0, "memory": "process peak RSS"}))
    pd.DataFrame({"phase": ["frozen", "unfrozen", "final"], "steps": [1, 1, 1], "seconds": [2.0, 6.0, 6.0],
                  "data_seconds": [0.5, 0.5, 0.5], "optimizer_seconds": [0.5, 1.5, 1.5],
                  "images_per_s": [1.0, 0.33, 0.33]}).to_csv(tmp_path / "metrics/cub/baseline_history.csv",
                                                              index=False)
    (row,) = rehearsal.training_rows(tmp_path, base)
    # per image 0.5, 2 and 2 s at CUB's batch of 20, plus the update per step; 5994 // 20 = 299 steps an epoch,
    # 2 + 4 + 4 epochs
    assert row["step_s"] == pytest.approx({"frozen": 10.5, "unfrozen": 41.5, "final": 41.5})
    assert row["hours"] == pytest.approx((10.5 * 299 * 2 + 41.5 * 299 * 4 + 41.5 * 299 * 4) / 3600)
    estimate = rehearsal.activation_estimate(row)
    static = 86e6 * 20 / 2**30
    assert estimate == pytest.approx(static + (4096 * 2**20 - 86e6 * 20 - 2**30) / 2 * 20 / 2**30)
    assert derived["train"]["batch_size"] == 2
