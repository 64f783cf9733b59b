"""Any dataset by format: FGVC-Aircraft, a user's image folders and a user's CSV; bad input named."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitfgvc.config import Params, ParamsError, load_params
from vitfgvc.data.acquire import SourceError, acquire
from vitfgvc.data.datasets import PARSERS, DatasetFormatError, parse_aircraft, parse_csv, parse_imagefolder, parser
from vitfgvc.data.prepare import PrepareError, prepare
from vitfgvc.data.registry import SPECS, FormatOptions

from .conftest import ROOT, smoke_params
from .fixtures import write_aircraft, write_photos


def _image(path, size=(60, 40), colour=(200, 30, 30), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _folder(root, layout: dict[str, int], seed=0):
    """``{"train/a": 3, ...}``: that many distinct images per folder."""
    for k, (folder, n) in enumerate(layout.items()):
        for i in range(n):
            _image(root / folder / f"img{i}.jpg", seed=seed + 100 * k + i)
    return root


def _params(**dotted) -> Params:
    return Params.model_validate(smoke_params(**dotted))


def _load(tmp_path, data: dict) -> Params:
    """Validate ``data`` as a stage does: from a params file, errors as ParamsError."""
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_params(path)


# --------------------------------------------------------------------------- Aircraft
def test_aircraft_parser_reads_the_official_archive(tmp_path):
    fx = write_aircraft(tmp_path / "fx", per_class=4)
    with tarfile.open(fx.files["fgvc-aircraft-2013b.tar.gz"]) as tar:
        tar.extractall(tmp_path / "tree", filter="data")
    parsed = parse_aircraft(tmp_path / "tree")
    assert parsed.classes == fx.classes == ["707-320", "737-700", "737-800", "A320"]
    got = {r.source: r for r in parsed.records}
    assert sorted(got) == sorted(r.source for r in fx.records)
    for r in fx.records:  # trainval trains, test tests; 1-based inclusive boxes become 0-based exclusive
        g = got[r.source]
        assert (g.label, g.class_name, g.split, g.box, g.trim_bottom) == (r.label, r.class_name, r.split, r.box, 20)
    family = parse_aircraft(tmp_path / "tree", FormatOptions(level="family"))
    assert family.classes == ["Boeing 707", "Boeing 737", "A320"]
    assert {r.class_name for r in family.records if got[r.source].class_name.startswith("737")} == {"Boeing 737"}
    assert parse_aircraft(tmp_path / "tree", FormatOptions(level="manufacturer")).classes == ["Boeing", "Airbus"]


def test_aircraft_prepare_cuts_the_banner(tmp_path):
    fx = write_aircraft(tmp_path / "fx", per_class=2)
    params = _params(**{"datasets.aircraft.path": str(fx.root), "datasets.aircraft.high_res": 512})
    acquire("aircraft", params.dataset("aircraft"), params.runtime.download, tmp_path / "raw", progress=False)
    prepare("aircraft", params, tmp_path / "raw", tmp_path / "prepared", progress=False)
    table = pd.read_csv(tmp_path / "prepared/manifest.csv").set_index("source")
    for r in fx.records:
        row = table.loc[r.source]
        assert (row.width, row.height) == (r.size[0], r.size[1] - 20)  # small images: only the banner goes
        with Image.open(tmp_path / "prepared" / row.image) as im:
            bottom = np.asarray(im)[-4:].mean()
        assert bottom > 60, "the dark banner was kept"


def test_aircraft_level_is_checked(tmp_path):
    with pytest.raises(ParamsError, match=r"datasets.aircraft.options: level must be one of variant, family"):
        _load(tmp_path, smoke_params(**{"datasets.aircraft.options": {"level": "model"}}))
    with pytest.raises(ParamsError, match=r"datasets.cub.options: format cub reads no options, got level"):
        _load(tmp_path, smoke_params(**{"datasets.cub.options": {"level": "family"}}))


# --------------------------------------------------------------------------- params
def test_a_users_dataset_needs_a_format_and_a_named_one_keeps_its_own(tmp_path):
    data = smoke_params()
    data["datasets"]["birds"] = {**data["datasets"]["mydata"], "format": None}
    with pytest.raises(ParamsError, match=r"datasets.birds.format is required"):
        _load(tmp_path, data)
    data["datasets"]["birds"]["format"] = "folders"
    with pytest.raises(ParamsError, match=r"datasets.birds.format must be one of .*imagefolder, csv, got 'folders'"):
        _load(tmp_path, data)
    data = smoke_params(**{"datasets.cub.format": "imagefolder"})
    with pytest.raises(ParamsError, match=r"datasets.cub is the built-in CUB-200-2011 .*another name"):
        _load(tmp_path, data)
    data = smoke_params(**{"pipeline.datasets": ["cub", "birds"]})
    with pytest.raises(ParamsError, match=r"pipeline.datasets names \['birds'\], which have no entry"):
        _load(tmp_path, data)
    data = smoke_params()
    del data["datasets"]["cub"]["format"]  # a named dataset reads its own format by default
    assert Params.model_validate(data).dataset("cub").format == "cub"


def test_a_dataset_name_cannot_hold_a_dash(tmp_path):
    data = smoke_params()
    data["datasets"]["my-birds"] = data["datasets"]["mydata"]
    with pytest.raises(ParamsError, match=r"datasets.my-birds"):
        _load(tmp_path, data)


# ------------------------------------------------------------------------ imagefolder
def test_imagefolder_with_train_and_test(tmp_path):
    root = _folder(tmp_path / "data", {"train/owl": 2, "train/wren": 3, "train/wren/close-ups": 1, "test/owl": 1})
    (root / "train/owl/notes.txt").write_text("not an image")
    (root / "train/.DS_Store").write_text("")
    parsed = parse_imagefolder(tmp_path)  # descends into the one folder
    assert parsed.classes == ["owl", "wren"] and parsed.has_test
    assert sorted((r.source, r.label, r.split) for r in parsed.records) == [
        ("test/owl/img0.jpg", 0, "test"), ("train/owl/img0.jpg", 0, "train"), ("train/owl/img1.jpg", 0, "train"),
        ("train/wren/close-ups/img0.jpg", 1, "train"), ("train/wren/img0.jpg", 1, "train"),
        ("train/wren/img1.jpg", 1, "train"), ("train/wren/img2.jpg", 1, "train")]


@pytest.mark.parametrize(("layout", "message"), [
    ({"train/a": 2, "train/b": 0, "test/a": 1}, r"train/b holds no image"),
    ({"train/a": 2, "train/b": 2, "test/c": 1}, r"class 'c' .* is in test but not in train"),
    ({"train/a": 2, "train/b": 2}, r"has train/ but no test/"),
    ({"a": 3}, r"holds 1 class folder\(s\); expected at least two"),
])
def test_imagefolder_errors_name_the_folder(tmp_path, layout, message):
    root = tmp_path / "data"
    for folder in layout:
        (root / folder).mkdir(parents=True, exist_ok=True)
    _folder(root, {k: v for k, v in layout.items() if v})
    with pytest.raises(DatasetFormatError, match=message):
        parse_imagefolder(root)


def test_symlinks_leaving_the_folder_are_refused(tmp_path):
    outside = _image(tmp_path / "elsewhere/secret.jpg")
    root = _folder(tmp_path / "data", {"a": 2, "b": 2})
    os.symlink(outside, root / "a/link.jpg")
    with pytest.raises(DatasetFormatError, match=r"image .*a/link.jpg leads outside the dataset folder"):
        parse_imagefolder(root)
    (root / "a/link.jpg").unlink()
    os.symlink(tmp_path / "elsewhere", root / "b/more")
    with pytest.raises(DatasetFormatError, match=r"folder .*b/more leads outside the dataset folder"):
        parse_imagefolder(root)
    (root / "b/more").unlink()
    os.symlink(root / "a/img0.jpg", root / "b/inside.jpg")  # inside the folder: fine (and a duplicate)
    assert len(parse_imagefolder(root).dropped) == 1


def test_duplicates_keep_the_training_copy_and_are_reported(tmp_path):
    fx = write_photos(tmp_path / "photos", train=2, test=1)
    params = _params(**{"datasets.mydata.path": str(fx.root)})
    acquire("mydata", params.dataset("mydata"), params.runtime.download, tmp_path / "raw", progress=False)
    copied = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.jpg"))
    assert copied == sorted([r.source for r in fx.records] + ["test/cat/cat_copy.jpg"])
    summary = prepare("mydata", params, tmp_path / "raw", tmp_path / "prepared", progress=False)
    assert (summary["images"], summary["duplicates"], summary["rejected"]) == (len(fx.records), 1, 0)
    rejected = pd.read_csv(tmp_path / "prepared/rejected.csv")
    assert rejected.values.tolist() == [["test/cat/cat_copy.jpg", "the same file as train/astronaut/astronaut_00.jpg "
                                         "(train, labelled astronaut)"]]
    table = pd.read_csv(tmp_path / "prepared/manifest.csv")
    assert set(table["split"]) == {"train", "test"} and "test/cat/cat_copy.jpg" not in set(table["source"])


def test_class_folders_alone_need_a_test_fraction(tmp_path):
    root = _folder(tmp_path / "data", {"owl": 6, "wren": 6})
    params = _params(**{"datasets.mydata.path": str(root)})
    acquire("mydata", params.dataset("mydata"), params.runtime.download, tmp_path / "raw", progress=False)
    with pytest.raises(PrepareError, match=r"datasets.mydata.test_fraction must be > 0: mydata \(imagefolder layout\)"):
        prepare("mydata", params, tmp_path / "raw", tmp_path / "prepared", progress=False)
    params = _params(**{"datasets.mydata.path": str(root), "datasets.mydata.test_fraction": 0.5})
    summary = prepare("mydata", params, tmp_path / "raw", tmp_path / "prepared", progress=False)
    assert (summary["train"], summary["test"]) == (6, 6)
    table = pd.read_csv(tmp_path / "prepared/manifest.csv")
    assert table.groupby(["class_name", "split"]).size().tolist() == [3, 3, 3, 3]  # stratified


def test_a_missing_source_says_what_to_set(tmp_path):
    params = _params(**{"datasets.mydata.path": None})
    with pytest.raises(SourceError, match=r"(?s)datasets.mydata: no source set .*datasets.mydata.path to the folder"):
        acquire("mydata", params.dataset("mydata"), params.runtime.download, tmp_path / "raw", progress=False)
    params = _params(**{"datasets.mydata.path": str(_folder(tmp_path / "one", {"a": 2}))})
    with pytest.raises(SourceError, match=r"datasets.mydata.path: imagefolder: .* expected at least two"):
        acquire("mydata", params.dataset("mydata"), params.runtime.download, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


# ------------------------------------------------------------------------------- csv
def _csv_dataset(root, rows: list[str], header="image,class_name,split,x0,y0,x1,y1", images=("a.jpg", "b.jpg",
                 "sub/c.jpg", "d.png")):
    for i, name in enumerate(images):
        _image(root / name, size=(60, 40), seed=i)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_csv_with_splits_and_boxes(tmp_path):
    root = _csv_dataset(tmp_path / "data", ["a.jpg,owl,train,1,2,30,40", "b.jpg,wren,train,,,,",
                                            "sub/c.jpg,owl,test,0,0,60,40", "d.png,wren,test,5,5,10,10"])
    parsed = parse_csv(root)
    assert parsed.classes == ["owl", "wren"] and parsed.has_test and parsed.annotations == (root / "labels.csv",)
    assert [(r.source, r.label, r.split, r.box) for r in parsed.records] == [
        ("a.jpg", 0, "train", (1.0, 2.0, 30.0, 40.0)), ("b.jpg", 1, "train", None),
        ("sub/c.jpg", 0, "test", (0.0, 0.0, 60.0, 40.0)), ("d.png", 1, "test", (5.0, 5.0, 10.0, 10.0))]


def test_csv_labels_keep_their_order_and_names(tmp_path):
    root = _csv_dataset(tmp_path / "data", ["a.jpg,7,scab", "b.jpg,2,rust", "sub/c.jpg,7,scab"],
                        header="image,label,class_name")
    parsed = parse_csv(root)
    assert parsed.classes == ["rust", "scab"] and [r.label for r in parsed.records] == [1, 0, 1]
    assert not parsed.has_test
    root = _csv_dataset(tmp_path / "nums", ["a.jpg,1", "b.jpg,0"], header="image,label")
    assert parse_csv(root).classes == ["0", "1"]


@pytest.mark.parametrize(("rows", "message"), [
    (["a.jpg,owl,train,1,2,30,40", "gone.jpg,wren,train,,,,"], r"line 3: image 'gone.jpg' not found"),
    (["a.jpg,owl,train,1,2,61,40", "b.jpg,wren,train,,,,"],
     r"line 2: box \(1, 2, 61, 40\) lies outside the 60x40 image 'a.jpg'"),
    (["a.jpg,owl,train,30,2,10,40", "b.jpg,wren,train,,,,"], r"line 2: box \(30, 2, 10, 40\) lies outside"),
    (["../a.jpg,owl,train,,,,", "b.jpg,wren,train,,,,"], r"line 2: image '../a.jpg' is not a path inside"),
    (["/etc/passwd,owl,train,,,,", "b.jpg,wren,train,,,,"], r"line 2: image '/etc/passwd' is not a path inside"),
    (["a.jpg,owl,val,,,,", "b.jpg,wren,train,,,,"], r"line 2: split 'val' is not train or test"),
    (["a.jpg,owl,train,,,,", "b.jpg,wren,test,,,,"], r"the classes \['wren'\] have test images but no training image"),
    (["a.jpg,owl,train,,,,", "a.jpg,wren,train,,,,"], r"image 'a.jpg' is listed twice"),
    (["a.jpg,owl,train,1,2,x,4", "b.jpg,wren,train,,,,"], r"line 2: box .* is not four numbers"),
])
def test_csv_errors_name_the_line(tmp_path, rows, message):
    root = _csv_dataset(tmp_path / "data", rows)
    with pytest.raises(DatasetFormatError, match=message) as err:
        parse_csv(root)
    assert "labels.csv" in str(err.value)


def test_csv_header_and_label_conflicts(tmp_path):
    root = _csv_dataset(tmp_path / "a", ["a.jpg,owl"], header="file,class_name")
    with pytest.raises(DatasetFormatError, match=r"expected the columns image and label and/or class_name"):
        parse_csv(root)
    root = _csv_dataset(tmp_path / "b", ["a.jpg,1,owl", "b.jpg,1,wren"], header="image,label,class_name")
    with pytest.raises(DatasetFormatError, match=r"line 3: label 1 is 'wren' here and 'owl' before"):
        parse_csv(root)
    root = _csv_dataset(tmp_path / "c", ["a.jpg,owl,1,2", "b.jpg,wren,,"], header="image,class_name,x0,y0")
    with pytest.raises(DatasetFormatError, match=r"a box needs all of x0, y0, x1, y1"):
        parse_csv(root)
    with pytest.raises(DatasetFormatError, match=r"no file named 'mine.csv'"):
        parse_csv(root, FormatOptions(annotations="mine.csv"))


def test_csv_end_to_end_copies_only_what_it_lists(tmp_path):
    root = _csv_dataset(tmp_path / "data", ["a.jpg,owl,train,1,2,30,40", "b.jpg,wren,train,,,,",
                                            "sub/c.jpg,owl,test,0,0,60,40", "d.png,wren,test,,,,"])
    (root / "labels.csv").rename(root / "annotations.csv")
    _image(root / "unlisted.jpg")
    data = smoke_params(**{"datasets.mydata.path": str(root), "datasets.mydata.format": "csv",
                           "datasets.mydata.options": {"annotations": "annotations.csv"}})
    params = Params.model_validate(data)
    acquire("mydata", params.dataset("mydata"), params.runtime.download, tmp_path / "raw", progress=False)
    assert sorted(p.name for p in (tmp_path / "raw").rglob("*") if p.is_file()) == [
        "a.jpg", "annotations.csv", "b.jpg", "c.jpg", "d.png"]
    summary = prepare("mydata", params, tmp_path / "raw", tmp_path / "prepared", progress=False)
    assert (summary["train"], summary["test"], summary["classes"]) == (2, 2, 2)
    table = pd.read_csv(tmp_path / "prepared/manifest.csv").set_index("source")
    assert table.loc["a.jpg", ["x0", "y0", "x1", "y1"]].tolist() == [1.0, 2.0, 30.0, 40.0]
    assert table.loc["b.jpg", ["x0", "y0", "x1", "y1"]].isna().all()


def test_every_profile_names_the_format_of_every_dataset():
    for profile in ("params.yaml", "params-smoke.yaml", "params-cpu.yaml"):
        params = load_params(ROOT / profile)
        assert {name: entry.format for name, entry in params.datasets.items()} == {
            "cub": "cub", "dogs": "dogs", "cars": "cars", "plant": "plant", "digits": "digits",
            "aircraft": "aircraft", "mydata": "imagefolder"}, profile


def test_a_named_datasets_folder_with_a_link_leading_out_is_refused(tmp_path):
    import tarfile as tf

    fx = write_aircraft(tmp_path / "fx", per_class=2)
    with tf.open(fx.files["fgvc-aircraft-2013b.tar.gz"]) as tar:
        tar.extractall(tmp_path / "tree", filter="data")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", tmp_path / "tree/fgvc-aircraft-2013b/notes.txt")
    params = _params(**{"datasets.aircraft.path": str(tmp_path / "tree")})
    with pytest.raises(SourceError, match=r"datasets.aircraft.path: .*notes.txt is a link leading outside"):
        acquire("aircraft", params.dataset("aircraft"), params.runtime.download, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def test_every_format_of_the_registry_but_the_synthetic_has_a_parser():
    assert set(PARSERS) == {name for name, s in SPECS.items() if not s.synthetic}
    assert parser("digits") is None and parser("csv") is parse_csv
    with pytest.raises(ValueError, match=r"unknown format 'folders'"):
        parser("folders")
