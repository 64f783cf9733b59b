"""The CPU profile over seeds (``profiles.py cpu --seeds N``): the derived params, the statistics, the verdict
rule and the report, on synthetic metrics (no DVC run)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml

from benchmarks import profiles, seeds
from vitfgvc.config import Params

from .conftest import ROOT

HARDWARE = {"cpu": "AMD EPYC", "cores": 2, "threads": 1, "gpu": None, "torch": "2.14.1+cu130"}
T3 = 4.302652729911275  # Student's t, 0.975 quantile, 2 degrees of freedom


@pytest.fixture(scope="module")
def cpu() -> dict:
    return yaml.safe_load((ROOT / "params-cpu.yaml").read_text())


def _without(data: dict, *keys: str) -> dict:
    return {k: v for k, v in data.items() if k not in keys}


# ------------------------------------------------------------------ derived params
def test_a_further_seed_changes_the_seed_and_restricts_the_variants_only(cpu):
    name, *others = list(cpu["ablation"]["variants"])
    before = copy.deepcopy(cpu)
    derived = seeds.derive_params(cpu, 7, [name])
    assert cpu == before  # the profile itself untouched
    params = Params.model_validate(derived)
    assert params.seed == 7
    assert list(params.ablation.variants) == [name]
    assert params.ablation.variants[name] == cpu["ablation"]["variants"][name]
    assert params.ablation.datasets == cpu["ablation"]["datasets"]
    assert _without(derived, "seed", "ablation") == _without(cpu, "seed", "ablation")
    profile = Params.model_validate(cpu)
    assert params.train.epochs == profile.train.epochs == cpu["train"]["epochs"]
    for model in ("baseline", "multistage"):  # every run trains as the profile's, but for its seed
        run, ref = params.run_config("digits", model).model_dump(), profile.run_config("digits", model).model_dump()
        assert run["seed"] == 7 and ref["seed"] == cpu["seed"]
        assert _without(run, "seed") == _without(ref, "seed")
    assert (params.run_config("digits", "multistage", name).model_dump()["train"]
            == profile.run_config("digits", "multistage", name).model_dump()["train"])


def test_without_seed_variants_no_dataset_is_ablated_and_the_params_still_validate(cpu):
    derived = seeds.derive_params(cpu, 1, [])
    params = Params.model_validate(derived)
    assert params.ablation.variants == {} and params.ablation.datasets == []
    assert params.pipeline.equal_time == ["digits"]  # the equal-time baseline is a key row: it stays
    assert profiles.stage_order(derived).count("tables") == 1
    assert not [s for s in profiles.stage_order(derived) if "ablat" in s]


def test_seeds_start_at_the_profiles_own_and_further_copies_sit_beside_it(cpu, tmp_path):
    assert seeds.seed_values(cpu, 3) == [cpu["seed"], cpu["seed"] + 1, cpu["seed"] + 2]
    assert seeds.seed_values({**cpu, "seed": 5}, 2) == [5, 6]
    assert seeds.seed_dir(tmp_path / ".profiles" / "cpu", 2) == tmp_path / ".profiles" / "cpu-seed2"


# ------------------------------------------------------------------ refusals
def test_seeds_are_refused_for_another_profile(cpu):
    for name in ("smoke", "rehearsal"):
        with pytest.raises(seeds.SeedsError, match=f"not '{name}'"):
            seeds.check_request(name, cpu, 3, [])


def test_an_unknown_variant_is_refused_naming_it_and_the_known_ones(cpu):
    known = list(cpu["ablation"]["variants"])
    with pytest.raises(seeds.SeedsError) as err:
        seeds.check_request("cpu", cpu, 3, [known[0], "no_such_variant"])
    assert "'no_such_variant'" in str(err.value) and all(k in str(err.value) for k in known)
    with pytest.raises(seeds.SeedsError, match="at least 2"):
        seeds.check_request("cpu", cpu, 1, [])
    with pytest.raises(seeds.SeedsError, match="needs --seeds"):
        seeds.check_request("cpu", cpu, None, known[:1])
    seeds.check_request("cpu", cpu, 3, known[:1])  # a valid request passes


@pytest.mark.parametrize("argv, expected", [
    (["smoke", "--seeds", "3"], "not 'smoke'"),
    (["rehearsal", "--seeds", "2"], "not 'rehearsal'"),
    (["cpu", "--seeds", "3", "--seed-variants", "no_such_variant"], "'no_such_variant'"),
])
def test_the_command_line_refuses_before_touching_anything(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        profiles.main([*argv, "--dir", str(tmp_path / "copy")])
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "copy").exists()


# ------------------------------------------------------------------ statistics
PARAMS = {"seed": 0, "pipeline": {"datasets": ["digits"], "equal_time": ["digits"]},
          "ablation": {"datasets": ["digits"], "variants": {"small": {"model": {"img_size": 16}},
                                                           "no_object": {"multistage": {"object": False}}}}}
# seed -> run -> (combined, a, b, c, train_seconds); None: the run has no such stage
FIGURES = {
    "baseline":            [(70, 70, None, None, 140), (72, 72, None, None, 150), (74, 74, None, None, 160)],
    "baseline_equal_time": [(75, 75, None, None, 300), (76, 76, None, None, 310), (80, 80, None, None, 320)],
    "multistage":          [(80, 60, 66, 70, 300), (81, 61, 67, 71, 310), (85, 62, 68, 72, 320)],
    "ablation/small":      [(80, 55, 60, 65, 200), (80, 56, 61, 66, 210), (86, 57, 62, 67, 220)],
}


def _metrics(run: str, fig: tuple) -> dict:
    combined, a, b, c, seconds = fig
    m = {"dataset": "digits", "model": "baseline" if run.startswith("baseline") else "multistage",
         "accuracy_a": a, "accuracy": combined, "epochs": 20, "train_seconds": seconds, "hardware": HARDWARE}
    if b is not None:
        m["accuracy_b"] = b
    if c is not None:
        m["accuracy_c"] = c
    return m


@pytest.fixture
def per_seed() -> dict[int, dict[str, dict]]:
    return {s: {f"digits/{run}": _metrics(run, figs[i]) for run, figs in FIGURES.items()}
            for i, s in enumerate((0, 1, 2))}


def test_rows_carry_each_seeds_figures_their_mean_and_sample_std(per_seed):
    rows = seeds.aggregate(per_seed, "digits", seeds.runs(PARAMS, "digits", ["small"]))
    assert [r.run for r in rows] == ["baseline", "baseline_equal_time", "multistage", "ablation/small"]
    by = {r.run: r for r in rows}
    base = by["baseline"]
    assert set(base.accuracy) == {"accuracy", "accuracy_a"}  # no stages b and c on the baseline
    assert base.accuracy["accuracy"].values == (70, 72, 74)
    assert base.accuracy["accuracy"].mean == pytest.approx(72.0)
    assert base.accuracy["accuracy"].std == pytest.approx(2.0)  # ddof = 1 (ddof = 0 would be 1.633)
    ms = by["multistage"]
    assert set(ms.accuracy) == {"accuracy", "accuracy_a", "accuracy_b", "accuracy_c"}
    assert ms.accuracy["accuracy"].mean == pytest.approx(82.0)
    assert ms.accuracy["accuracy"].std == pytest.approx(math.sqrt(7))  # deviations -2, -1, 3
    assert ms.accuracy["accuracy_b"].mean == pytest.approx(67.0) and ms.accuracy["accuracy_b"].std == 1.0
    assert ms.train_seconds.mean == pytest.approx(310.0) and ms.epochs == (20, 20, 20)
    assert by["ablation/small"].label == "variant small"


def test_a_stage_is_dropped_where_any_seed_lacks_it(per_seed):
    per_seed[1]["digits/multistage"]["accuracy_b"] = None
    del per_seed[2]["digits/multistage"]["accuracy_c"]
    (ms,) = seeds.aggregate(per_seed, "digits", ["multistage"])
    assert set(ms.accuracy) == {"accuracy", "accuracy_a"}


def test_a_run_missing_for_a_seed_is_an_error_naming_it(per_seed):
    del per_seed[2]["digits/ablation/small"]
    with pytest.raises(seeds.SeedsError, match=r"digits/ablation/small with seed\(s\) 2"):
        seeds.aggregate(per_seed, "digits", ["ablation/small"])


def test_differences_are_paired_by_seed(per_seed):
    rows = seeds.aggregate(per_seed, "digits", seeds.runs(PARAMS, "digits", ["small"]))
    diffs = {d.name: d for d in seeds.differences(rows)}
    assert list(diffs) == ["multistage − baseline", "multistage − baseline_equal_time",
                           "small − baseline_equal_time", "small − multistage"]
    d = diffs["multistage − baseline"]
    assert d.values == (10, 9, 11)
    assert d.stat.mean == pytest.approx(10.0) and d.stat.std == pytest.approx(1.0)
    # unpaired, the spread would be sqrt(2^2 + 7) = 3.3; paired, the shared seed cancels
    lo, hi = d.interval
    assert (lo, hi) == (pytest.approx(10 - T3 / math.sqrt(3)), pytest.approx(10 + T3 / math.sqrt(3)))
    assert d.verdict == seeds.CLAIMED
    assert diffs["multistage − baseline_equal_time"].values == (5, 5, 5)
    assert diffs["multistage − baseline_equal_time"].stat.std == 0
    assert diffs["multistage − baseline_equal_time"].verdict == seeds.CLAIMED
    assert diffs["small − baseline_equal_time"].values == (5, 4, 6)
    assert diffs["small − baseline_equal_time"].verdict == seeds.CLAIMED
    small = diffs["small − multistage"]
    assert small.values == (0, -1, 1) and small.stat.mean == 0 and small.stat.std == pytest.approx(1.0)
    assert small.verdict == seeds.NOT_CLAIMED


def test_no_equal_time_row_no_equal_time_differences(per_seed):
    params = {**PARAMS, "pipeline": {"datasets": ["digits"], "equal_time": []}}
    runs = seeds.runs(params, "digits", ["small"])
    assert runs == ["baseline", "multistage", "ablation/small"]
    names = [d.name for d in seeds.differences(seeds.aggregate(per_seed, "digits", runs))]
    assert names == ["multistage − baseline", "small − multistage"]


# ------------------------------------------------------------------ the verdict rule
def test_t_quantiles():
    assert seeds.t_critical(3) == pytest.approx(T3)
    assert seeds.t_critical(5) == pytest.approx(2.776445, abs=1e-5)
    assert seeds.t_critical(30) == pytest.approx(2.045230, abs=1e-5)


@pytest.mark.parametrize("factor, expected", [(1.05, seeds.CLAIMED), (0.95, seeds.NOT_CLAIMED),
                                              (-1.05, seeds.CLAIMED), (-0.95, seeds.NOT_CLAIMED)])
def test_a_difference_is_claimed_when_its_95_percent_interval_excludes_zero(factor, expected):
    half = T3 * 1.0 / math.sqrt(3)  # std 1 over 3 seeds
    mean = factor * half
    assert seeds.verdict([mean - 1, mean, mean + 1]) == expected


def test_fewer_than_three_seeds_never_claim():
    assert seeds.verdict([5.0, 5.1]) == seeds.NOT_CLAIMED     # a 2-seed interval would exclude zero
    assert seeds.verdict([5.0]) == seeds.NOT_CLAIMED
    assert seeds.verdict([5.0, 5.1, 4.9]) == seeds.CLAIMED
    # 2 points on 3 seeds moving by 1 (the machine-to-machine scale of one seed): not claimed
    assert seeds.verdict([1.0, 2.0, 3.0]) == seeds.NOT_CLAIMED
    assert seeds.verdict([0.0, 0.0, 0.0]) == seeds.NOT_CLAIMED


# ------------------------------------------------------------------ reading and the report
def test_read_seed_reads_each_key_run_of_a_copy(tmp_path, per_seed):
    for key, m in per_seed[0].items():
        path = tmp_path / "metrics" / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m))
    assert seeds.read_seed(tmp_path, PARAMS, ["small"]) == per_seed[0]
    assert set(seeds.read_seed(tmp_path, PARAMS, [])) == {"digits/baseline", "digits/baseline_equal_time",
                                                         "digits/multistage"}
    with pytest.raises(seeds.SeedsError, match="no_object.json is missing"):
        seeds.read_seed(tmp_path, PARAMS, ["small", "no_object"])


def test_the_report_has_every_row_the_differences_and_how_it_was_made(per_seed):
    command = "python benchmarks/profiles.py cpu --seeds 3 --seed-variants small"
    text = seeds.report(per_seed, PARAMS, ["small"], command=command)
    assert f"Command: `{command}`" in text
    assert "Seeds: 0, 1, 2" in text and "Variants repeated: small" in text
    assert "Hardware: CPU AMD EPYC, 2 cores, 1 torch threads, torch 2.14.1+cu130" in text
    assert "| baseline | combined | 70.0 | 72.0 | 74.0 | 72.00 ± 2.00 |" in text
    assert "|  | a (image) | 70.0 | 72.0 | 74.0 | 72.00 ± 2.00 |" in text
    assert "| baseline_equal_time | combined | 75.0 | 76.0 | 80.0 | 77.00 ± 2.65 |" in text
    assert "| multistage | combined | 80.0 | 81.0 | 85.0 | 82.00 ± 2.65 |" in text
    assert "|  | c (parts) | 70.0 | 71.0 | 72.0 | 71.00 ± 1.00 |" in text
    assert "| variant small | combined | 80.0 | 80.0 | 86.0 | 82.00 ± 3.46 |" in text
    assert "| multistage | 20 | 310 | 300, 310, 320 |" in text
    assert "| baseline | 20 | 150 | 140, 150, 160 |" in text
    assert ("| multistage − baseline | +10.0, +9.0, +11.0 | +10.00 ± 1.00 | [+7.52, +12.48] | exceeds the spread |"
            in text)
    assert ("| small − multistage | +0.0, -1.0, +1.0 | +0.00 ± 1.00 | [-2.48, +2.48] | within the spread: not "
            "claimed |" in text)
    assert "With N = 3, t = 4.30" in text and "| 95 % interval |" in text
    assert "no_object" not in text  # a variant not repeated is not reported


def test_the_report_shows_train_flops_when_the_metrics_have_them(per_seed):
    for i, runs in per_seed.items():
        for m in runs.values():
            m["train_flops"] = 1.0e15 * (i + 1)
    text = seeds.report(per_seed, PARAMS, [], command="c")
    assert "mean train FLOPs |" in text and "| 2e+15 |" in text


def test_signs_never_show_a_rounding_residue_as_minus_zero():
    assert seeds._signed(-1e-12, 1) == "+0.0" and seeds._signed(-0.04, 1) == "+0.0"
    assert seeds._signed(-0.06, 1) == "-0.1" and seeds._signed(2.1, 2) == "+2.10"
