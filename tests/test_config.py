"""The params schema: every profile validates; every bad value is named with its key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from vitfgvc.config import ParamsError, flatten, load_params

from .conftest import ROOT, set_dotted, subprocess_env

PROFILES = ["params.yaml", "params-smoke.yaml", "params-cpu.yaml"]
# Values whose inner keys are free per profile: overrides, sources and extra timm arguments.
OPAQUE = ("datasets.{}.train", "datasets.{}.transform", "datasets.{}.kaggle", "model.kwargs", "ablation.variants")


def _keys(data: dict) -> set[str]:
    opaque = {o.format(d) for o in OPAQUE for d in data["datasets"]}
    keys = set()

    def walk(node, prefix):
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict) and v and name not in opaque:
                walk(v, name + ".")
            else:
                keys.add(name)

    walk(data, "")
    return keys


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_validate_and_runs_read_the_profiles_values(profile):
    raw = yaml.safe_load((ROOT / profile).read_text())
    params = load_params(ROOT / profile)
    # every value the profile writes is the value the schema holds, none dropped or altered
    assert params.model_dump(mode="json", exclude_unset=True) == raw
    for dataset in params.pipeline.datasets:
        overrides = raw["datasets"][dataset].get("train") or {}
        for model in ("baseline", "multistage"):
            run = params.run_config(dataset, model)
            assert (run.dataset, run.model, run.seed) == (dataset, model, raw["seed"])
            assert run.high_res == raw["datasets"][dataset]["high_res"]
            assert run.backbone.model_dump(mode="json") == raw["model"]
            assert run.train.model_dump(mode="json") == {**raw["train"], **overrides}
            if model == "multistage":
                assert run.multistage.model_dump(mode="json") == raw["multistage"]
                assert run.aug.model_dump(mode="json") == raw["aug"]


@pytest.mark.parametrize("profile", PROFILES[1:])
def test_profiles_have_the_same_keys(profile):
    full = _keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    other = _keys(yaml.safe_load((ROOT / profile).read_text()))
    assert other == full, f"only in params.yaml: {sorted(full - other)}; only in {profile}: {sorted(other - full)}"


def _write(tmp_path, edit):
    data = yaml.safe_load((ROOT / "params-smoke.yaml").read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _set(dotted, value):
    return lambda data: set_dotted(data, **{dotted: value})


@pytest.mark.parametrize(
    "dotted, value, expected",
    [
        ("aug.erase_p", 1.5, "aug.erase_p must be in [0, 1], got 1.5"),
        ("train.epochs", "ten", "train.epochs must be a valid integer, got 'ten'"),
        ("train.lr", "1e-3", "train.lr must be a valid number, got '1e-3' (YAML reads '1e-3' as text: write 1.0e-3)"),
        ("train.batch_size", 0, "train.batch_size must be >= 1, got 0"),
        ("datasets.cub.train", {"lr": -1.0}, "datasets.cub.train.lr must be > 0, got -1.0"),
        ("datasets.cub.train", {"epoch": 3}, "datasets.cub.train.epoch is not a known key"),
        ("multistage.part_pool", "median", "multistage.part_pool must be one of 'avg', 'max' or 'gem', got 'median'"),
        ("aug.crop_threshold", [0.6, 0.4], "aug.crop_threshold must be [low, high] with low <= high, got [0.6, 0.4]"),
        ("aug.erase_pp", 0.5, "aug.erase_pp is not a known key"),
        ("pipeline.datasets", ["cub", "birds"], "pipeline.datasets names ['birds'], which have no entry under datasets"),
        ("pipeline.datasets", ["cub", "Birds"], "pipeline.datasets.1 must match the pattern"),
        ("ablation.variants", {"full": {"aug": {"erase_p": 0.0}}}, "ablation.variants must not define 'full'"),
        ("ablation.variants", {"x": {"aug": {"erase_pp": 0.0}}}, "ablation.variants.x: aug.erase_pp is not a known key"),
        ("ablation.variants", {"x": {"aug": {"erase_p": 2.0}}}, "ablation.variants.x: aug.erase_p must be in [0, 1]"),
        ("ablation.variants", {"x": {"runtime": {"workers": 1}}}, "ablation.variants x may only change the sections"),
        ("ablation.variants", {"x": {"aug": {"erase_p": 0.25}}}, "ablation.variants.x changes nothing on dogs"),
        ("ablation.variants", {"Bad-Name": {"aug": {"erase_p": 0.0}}}, "ablation.variants.Bad-Name"),
        ("runtime.workers", -1, "runtime.workers must be >= 0, got -1"),
        ("ablation.datasets", ["cars"], "ablation.datasets must be a subset of pipeline.datasets"),
        ("model.pretrained", "yes", "model.pretrained must be a valid boolean, got 'yes'"),
        ("model.final_norm", "new", "model.final_norm must be one of 'fresh' or 'pretrained', got 'new'"),
        ("multistage.small_components", "drop",
         "multistage.small_components must be one of 'fallback' or 'skip', got 'drop'"),
        ("multistage.closing_footprint", "disk",
         "multistage.closing_footprint must be one of 'square' or 'cross', got 'disk'"),
    ],
)
def test_bad_values_name_their_key(tmp_path, dotted, value, expected):
    path = _write(tmp_path, _set(dotted, value))
    if dotted == "ablation.datasets":
        path = _write(tmp_path, lambda d: (_set("pipeline.datasets", ["cub"])(d), _set(dotted, value)(d)))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert expected in str(err.value)
    assert str(err.value).startswith(str(path))


def test_a_cross_closing_needs_an_odd_side(tmp_path):
    path = _write(tmp_path, lambda d: set_dotted(d, **{"multistage.closing_footprint": "cross", "multistage.closing": 4}))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert ("multistage.closing_footprint must be square with an even multistage.closing (4): a cross needs a "
            "centre row and column, got 'cross'") in str(err.value)
    for closing in (0, 3, 5):
        ok = _write(tmp_path, lambda d: set_dotted(d, **{"multistage.closing_footprint": "cross",
                                                       "multistage.closing": closing}))
        assert load_params(ok).multistage.closing == closing


@pytest.mark.parametrize("runtime, expected", [
    ({"nnodes": 2}, "runtime.nnodes is 2: runtime.rdzv_endpoint (host:port of the rendezvous, reachable from every "
                    "node) is required"),
    ({"nnodes": 2, "rdzv_endpoint": "node001"}, "runtime.rdzv_endpoint must be host:port (a port of 1-65535 on a "
                                                "host every node reaches), got 'node001'"),
    ({"nnodes": 2, "rdzv_endpoint": "node001:70000"}, "runtime.rdzv_endpoint must be host:port"),
    ({"nnodes": 2, "rdzv_endpoint": "node001:29500", "node_rank": 2},
     "runtime.node_rank must be below runtime.nnodes (2), got 2"),
])
def test_several_nodes_need_a_rendezvous(tmp_path, runtime, expected):
    path = _write(tmp_path, lambda d: set_dotted(d, **{f"runtime.{k}": v for k, v in runtime.items()}))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert expected in str(err.value)
    ok = _write(tmp_path, lambda d: set_dotted(d, **{"runtime.nnodes": 2, "runtime.rdzv_endpoint": "10.0.0.1:29500"}))
    assert load_params(ok).runtime.rdzv_endpoint == "10.0.0.1:29500"


def test_missing_section_and_every_problem_listed(tmp_path):
    def edit(data):
        del data["pipeline"]
        data["aug"]["erase_p"] = -1
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, edit))
    lines = str(err.value).splitlines()
    assert any("pipeline is required but missing" in line for line in lines)
    assert any("aug.erase_p must be in [0, 1], got -1" in line for line in lines)


def test_run_config_applies_dataset_overrides():
    params = load_params(ROOT / "params.yaml")
    cars = params.run_config("cars", "multistage")
    assert (cars.train.epochs_frozen, cars.train.lr, cars.high_res) == (24, 3.3e-3, 512)
    assert cars.train.weight_decay == params.train.weight_decay  # not overridden: inherited
    base = params.run_config("dogs", "baseline")
    assert base.multistage is None and base.aug is None  # the baseline reads neither


@pytest.mark.parametrize("variant", list(load_params(ROOT / "params.yaml").ablation.variants))
def test_each_variant_differs_from_the_multistage_run_in_exactly_its_keys(variant):
    params = load_params(ROOT / "params.yaml")
    full = flatten(params.run_config("dogs", "multistage").model_dump())
    other = flatten(params.run_config("dogs", "multistage", variant).model_dump())
    changed = sorted(k for k in full if full[k] != other[k] and k != "variant")
    assert changed == sorted(flatten(params.ablation.variants[variant])), changed


def test_stage_stops_before_any_work_on_bad_params(tmp_path):
    path = _write(tmp_path, _set("aug.erase_p", 1.5))
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--dataset", "digits",
                           "--params", str(path)], cwd=tmp_path, capture_output=True, text=True,
                          env=subprocess_env())
    assert proc.returncode == 1
    assert "aug.erase_p must be in [0, 1], got 1.5" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_the_paper_profile_is_the_originals_recipe():
    """docs/method.md's fidelity table, value by value: params.yaml runs what the authors' notebooks ran
    (or the documented, deliberate change)."""
    from vitfgvc.training import phases

    p = load_params(ROOT / "params.yaml")
    assert (p.model.name, p.model.img_size, p.model.pretrained, p.model.final_norm) == (
        "vit_base_patch16_384.orig_in21k_ft_in1k", 384, True, "fresh")
    t = p.transform
    assert (t.rrc_scale, t.rrc_ratio, t.hflip, t.affine_p, t.max_rotate, t.zoom, t.max_warp) == (
        [0.75, 1.0], [3 / 4, 4 / 3], 0.5, 0.75, 10.0, [1.0, 1.1], 0.2)
    assert (t.lighting_p, t.max_lighting, t.noise, t.eval_view, t.eval_extra) == (0.75, 0.2, 0.0, "center_crop", 0.14)
    tr = p.train
    assert (tr.opt, tr.betas, tr.eps, tr.weight_decay, tr.lookahead_k, tr.lookahead_alpha) == (
        "ranger", [0.95, 0.99], 1.0e-6, 0.01, 6, 0.5)
    assert (tr.sched, tr.warmup, tr.div, tr.div_final, tr.moms) == ("one_cycle", 0.5, 25.0, 1.0e5, [0.95, 0.85])
    assert (tr.label_smoothing, tr.amp, tr.frozen_norms, tr.encoder_lr_div) == (0.1, True, "final", 50.0)
    ms = p.multistage
    assert (ms.attention, ms.head_fusion, ms.discard_ratio, ms.threshold, ms.map_size) == (
        "rollout", "mean", 0.0, "mean", 448)
    assert (ms.closing, ms.closing_footprint, ms.small_components, ms.min_area * 448 ** 2, ms.fallback) == (
        3, "cross", "skip", pytest.approx(64 * 64), "full")
    assert (ms.num_parts, ms.part_window, ms.part_iou, ms.part_pool, ms.part_grid) == (2, 1 / 3, 0.1, "avg", 128)
    assert (ms.part_loss, ms.parts_from_erased, p.aug.erase_p, p.aug.erase_threshold, p.aug.crop_p) == (
        "sum", False, 0.5, 0.7, 0.0)
    recipe = {  # dataset: (batch, high_res, crop scale, encoder lr divisor, [(phase, epochs, lr)])
        "dogs": (16, 448, [0.75, 1.0], 50.0, [("frozen", 2, 3e-3), ("unfrozen", 4, 1e-3)]),
        "cub": (20, 448, [0.75, 1.0], 50.0, [("frozen", 2, 3e-3), ("unfrozen", 4, 1e-3), ("final", 4, 1e-4)]),
        "cars": (16, 512, [0.7, 1.0], 100.0, [("frozen", 24, 1e-2), ("unfrozen", 32, 3.3e-3)]),
        "plant": (16, 448, [0.75, 1.0], 50.0, [("frozen", 2, 3e-3), ("unfrozen", 6, 1e-3)]),
        # stanford_dog/train_aircraft.ipynb: size 786, bs 16, fit_one_cycle(6, 3e-3), then 36 at [lr/25, lr, lr]
        "aircraft": (16, 786, [0.75, 1.0], 25.0, [("frozen", 6, 3e-3), ("unfrozen", 36, 1e-3)]),
    }
    for dataset, (batch, high_res, scale, div, want) in recipe.items():
        cfg = p.run_config(dataset, "multistage")
        got = [(ph.name, ph.epochs, ph.lr) for ph in phases(cfg)]
        assert (cfg.train.batch_size, cfg.high_res, cfg.transform.rrc_scale, cfg.train.encoder_lr_div, got) == (
            batch, high_res, scale, div, want), dataset
