"""Prepare: manifests match what the fixture archives hold; images are decoded once, boxes follow."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from vitfgvc.config import Params
from vitfgvc.data.acquire import acquire
from vitfgvc.data.datasets import DatasetFormatError, parse_cars
from vitfgvc.data.extract import extract
from vitfgvc.data.prepare import MANIFEST_COLUMNS, PrepareError, prepare
from vitfgvc.images import target_size

from .conftest import smoke_params
from .fixtures import write_aircraft, write_cars, write_cub, write_dogs, write_plant

WRITERS = {"cub": write_cub, "dogs": write_dogs, "cars": write_cars, "plant": write_plant, "aircraft": write_aircraft}
BANNER = {"aircraft": 20}  # rows a format cuts off the bottom of every image


def make_params(**dotted) -> Params:
    return Params.model_validate(smoke_params(**dotted))


def run(tmp_path, name, fixture_kw=None, progress=False, **dotted):
    fx = WRITERS[name](tmp_path / "fx", **(fixture_kw or {}))
    params = make_params(**{f"datasets.{name}.path": str(fx.root), **dotted})
    acquire(name, params.dataset(name), params.runtime.download, tmp_path / "raw", progress=False)
    summary = prepare(name, params, tmp_path / "raw", tmp_path / "prepared", progress=progress)
    table = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    return fx, params, summary, table


@pytest.mark.parametrize("name", ["cub", "dogs", "cars", "plant", "aircraft"])
def test_manifest_matches_the_fixture(tmp_path, name):
    fx, params, summary, table = run(tmp_path, name, {"per_class": 6} if name != "plant" else {})
    high_res = params.dataset(name).high_res
    assert list(table.columns) == MANIFEST_COLUMNS
    assert len(table) == len(fx.records) == summary["images"]
    assert summary["classes"] == len(fx.classes)
    classes = pd.read_csv(tmp_path / "prepared/classes.csv")
    assert classes["class_name"].tolist() == fx.classes and classes["label"].tolist() == list(range(len(fx.classes)))
    rows = table.set_index("source")
    for r in fx.records:
        row = rows.loc[r.source]
        assert (row.label, row.class_name) == (r.label, r.class_name), r.source
        if name != "plant":
            assert row.split == r.split, r.source
        kept = (r.size[0], r.size[1] - BANNER.get(name, 0))
        w, h = target_size(*kept, high_res)
        assert (row.width, row.height) == (w, h)
        with Image.open(tmp_path / "prepared" / row.image) as im:
            assert im.mode == "RGB" and im.size == (w, h) and im.format == "JPEG"
        if r.box is None:
            assert row[["x0", "y0", "x1", "y1"]].isna().all()
        else:
            sx, sy = w / kept[0], h / kept[1]
            expected = [r.box[0] * sx, r.box[1] * sy, r.box[2] * sx, r.box[3] * sy]
            assert row[["x0", "y0", "x1", "y1"]].tolist() == pytest.approx(expected, abs=0.011), r.source
    assert fx.unlabelled == [] or not set(fx.unlabelled) & set(table["source"])


def test_gray_cmyk_and_png_named_jpg_become_rgb(tmp_path):
    fx, _, _, table = run(tmp_path, "dogs")
    kinds = {r.kind for r in fx.records}
    assert {"gray", "cmyk", "png_as_jpg"} <= kinds
    rows = table.set_index("source")
    for r in fx.records:
        if r.kind in ("gray", "cmyk", "png_as_jpg"):
            with Image.open(tmp_path / "prepared" / rows.loc[r.source].image) as im:
                assert (im.format, im.mode) == ("JPEG", "RGB")


def test_images_are_never_upscaled_and_shorter_side_is_capped(tmp_path):
    fx, _, _, table = run(tmp_path, "cub", **{"datasets.cub.high_res": 40})
    shrunk = 0
    for r in fx.records:
        row = table.set_index("source").loc[r.source]
        assert min(row.width, row.height) == min(40, min(r.size)), r.source
        assert abs(row.width / row.height - r.size[0] / r.size[1]) < 0.05, r.source  # aspect kept
        shrunk += min(r.size) > 40 and max(row.width, row.height) > 40
    assert shrunk  # the longer side is not capped: it follows the shorter one


@pytest.mark.parametrize("size, high_res, stored", [
    ((500, 375), 448, (500, 375)),    # CUB-like: already below high_res on its shorter side, kept whole
    ((375, 500), 448, (375, 500)),
    ((1024, 512), 448, (896, 448)),   # 2:1 Cars-like: the shorter side shrunk to high_res, the longer follows
    ((512, 1024), 512, (512, 1024)),
    ((2000, 1500), 448, (597, 448)),
    ((448, 448), 448, (448, 448)),
])
def test_stored_size_caps_the_shorter_side(size, high_res, stored):
    assert target_size(*size, high_res) == stored


def test_plant_test_split_is_stratified_and_seeded(tmp_path):
    _, _, summary, table = run(tmp_path / "a", "plant", {"per_class": 10}, **{"datasets.plant.test_fraction": 0.2})
    counts = table[table.split == "test"].groupby("label").size().tolist()
    assert counts == [2, 2, 2, 2] and summary["test"] == 8
    _, _, _, again = run(tmp_path / "b", "plant", {"per_class": 10}, **{"datasets.plant.test_fraction": 0.2})
    assert again[["source", "split"]].equals(table[["source", "split"]])
    _, _, _, other = run(tmp_path / "c", "plant", {"per_class": 10}, seed=1, **{"datasets.plant.test_fraction": 0.2})
    assert not other[["source", "split"]].equals(table[["source", "split"]])


def test_validation_fraction_comes_out_of_train_only(tmp_path):
    fx, _, summary, table = run(tmp_path, "cub", {"per_class": 8}, **{"datasets.cub.val_fraction": 0.25})
    official = {r.source: r.split for r in fx.records}
    for source, split in zip(table.source, table.split):
        assert official[source] == ("train" if split == "val" else split)
    assert table[table.split == "val"].groupby("label").size().tolist() == [1, 1, 1]
    assert summary["val"] == 3


def test_undecodable_images_are_rejected_with_their_reason(tmp_path):
    fx, _, summary, table = run(tmp_path, "cub", {"corrupt": 1}, **{"prepare.max_rejected": 0.5})
    bad = [r.source for r in fx.records if r.kind == "corrupt"]
    rejected = pd.read_csv(tmp_path / "prepared/rejected.csv")
    assert rejected["source"].tolist() == bad and rejected["reason"].str.len().min() > 5
    assert summary["rejected"] == 1 and not set(bad) & set(table.source)


def test_too_many_rejected_fails_and_writes_nothing(tmp_path):
    with pytest.raises(PrepareError, match=r"1 of 13 images could not be decoded \(7.7% > prepare.max_rejected"):
        run(tmp_path, "cub", {"corrupt": 1}, **{"prepare.max_rejected": 0.05})
    assert not (tmp_path / "prepared").exists() and not (tmp_path / ".prepared.tmp").exists()


def test_official_test_split_forbids_a_test_fraction(tmp_path):
    with pytest.raises(PrepareError, match="datasets.cub.test_fraction must be 0"):
        run(tmp_path, "cub", **{"datasets.cub.test_fraction": 0.2})


def test_cars_car_ims_packaging(tmp_path):
    fx = write_cars(tmp_path / "fx", packaging="car_ims")
    for f in fx.files.values():
        if f.suffix == ".tgz":
            extract(f, tmp_path / "tree", progress=False)
        else:
            (tmp_path / "tree" / f.name).write_bytes(f.read_bytes())
    parsed = parse_cars(tmp_path / "tree")
    got = {(r.source, r.label, r.class_name, r.split, r.box) for r in parsed.records}
    assert got == {(r.source, r.label, r.class_name, r.split, r.box) for r in fx.records}


def test_a_missing_annotation_file_is_named(tmp_path):
    fx = write_cub(tmp_path / "fx")
    extract(fx.files["CUB_200_2011.tgz"], tmp_path / "tree", progress=False)
    (tmp_path / "tree/CUB_200_2011/train_test_split.txt").unlink()
    params = make_params()
    with pytest.raises(DatasetFormatError, match="train_test_split.txt not found"):
        prepare("cub", params, tmp_path / "tree", tmp_path / "prepared", progress=False)
