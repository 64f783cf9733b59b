"""The miniature archives and the loopback server are what they claim to be."""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tests.fixtures import FileServer, sha256, write_all, write_cars, write_cub, write_dogs, write_plant
from tests.fixtures.__main__ import main as fixtures_main


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("fx"))


@pytest.fixture(scope="module")
def fx_corrupt(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("fxc"), corrupt=2)


def _tar_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _tar_dirs(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {m.name for m in tar.getmembers() if m.isdir()}


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _check_image(data: bytes, record) -> None:
    image = _decode(data)
    assert image.size == record.size
    expected = {"rgb": ("JPEG", "RGB"), "gray": ("JPEG", "L"), "cmyk": ("JPEG", "CMYK"),
                "png_as_jpg": ("PNG", "RGB")}[record.kind]
    assert (image.format, image.mode) == expected, record
    if record.box is not None:
        x0, y0, x1, y1 = record.box
        assert 0 <= x0 < x1 <= record.size[0] and 0 <= y0 < y1 <= record.size[1]
        # The object is drawn at the box: it differs from the background around it.
        rgb = np.asarray(image.convert("RGB"), dtype=float)
        inside = np.zeros(rgb.shape[:2], dtype=bool)
        inside[int(y0):int(y1), int(x0):int(x1)] = True
        if (~inside).any():
            assert np.abs(rgb[inside].mean(axis=0) - rgb[~inside].mean(axis=0)).max() > 10, record


def _text(data: bytes) -> list[list[str]]:
    return [line.split(" ") for line in data.decode().splitlines()]


# ------------------------------------------------------------------------------ CUB


def test_cub_archive_layout_and_text_files(fx):
    f = fx["cub"]
    tgz = f.files["CUB_200_2011.tgz"]
    assert list(f.files) == ["CUB_200_2011.tgz"] and tgz.parent == f.root
    assert tgz.read_bytes()[:2] == b"\x1f\x8b" and tgz.read_bytes()[4:8] == b"\0\0\0\0"  # gzip, mtime 0
    members = _tar_files(tgz)
    meta = {"images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
            "bounding_boxes.txt", "README"}
    assert set(members) == ({"attributes.txt"} | {f"CUB_200_2011/{m}" for m in meta}
                            | {f"CUB_200_2011/images/{r.source}" for r in f.records})
    assert {"CUB_200_2011", "CUB_200_2011/images", "CUB_200_2011/images/001.Black_footed_Albatross"} <= _tar_dirs(tgz)

    base = "CUB_200_2011/"
    assert _text(members[base + "classes.txt"]) == [
        ["1", "001.Black_footed_Albatross"], ["2", "002.Laysan_Albatross"], ["3", "003.Sooty_Albatross"]]
    assert f.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    images = _text(members[base + "images.txt"])
    labels = dict(_text(members[base + "image_class_labels.txt"]))
    split = dict(_text(members[base + "train_test_split.txt"]))
    boxes = {row[0]: row[1:] for row in _text(members[base + "bounding_boxes.txt"])}
    assert [int(i) for i, _ in images] == list(range(1, len(f.records) + 1))
    for (image_id, rel), r in zip(images, f.records, strict=True):
        assert rel == r.source and rel.split("/")[0].endswith("." + r.class_name)
        assert rel.split("/")[1].startswith(r.class_name.split("_")[0])  # "Black_Footed_Albatross_0046_18.jpg"
        assert int(labels[image_id]) == r.label + 1
        assert split[image_id] == {"train": "1", "test": "0"}[r.split]
        assert all(v.endswith(".0") for v in boxes[image_id])  # "60.0 27.0 325.0 304.0"
        x, y, w, h = map(float, boxes[image_id])
        assert r.box == (x, y, x + w, y + h)
        _check_image(members[base + "images/" + rel], r)
    assert {r.kind for r in f.records} == {"rgb", "gray", "cmyk"}
    assert [len(f.by_split(s)) for s in ("train", "test")] == [6, 6] and f.unlabelled == []


# ----------------------------------------------------------------------------- Dogs


def test_dogs_images_and_voc_annotations(fx):
    f = fx["dogs"]
    assert set(f.files) == {"images.tar", "annotation.tar", "lists.tar"}
    images = _tar_files(f.files["images.tar"])
    annotations = _tar_files(f.files["annotation.tar"])
    assert set(images) == {f"Images/{r.source}" for r in f.records}
    assert set(annotations) == {f"Annotation/{r.source.removesuffix('.jpg')}" for r in f.records}
    assert "Images/n02085620-Chihuahua" in _tar_dirs(f.files["images.tar"])
    assert f.classes == ["Chihuahua", "Japanese_spaniel", "Maltese_dog"]

    n_objects = []
    for r in f.records:
        folder, name = r.source.split("/")
        assert folder.split("-", 1)[1] == r.class_name and name.startswith(folder.split("-")[0] + "_")
        root = ET.fromstring(annotations[f"Annotation/{r.source.removesuffix('.jpg')}"])
        assert root.tag == "annotation" and root.findtext("folder") == folder.split("-")[0][1:]
        assert root.findtext("filename") == name.removesuffix(".jpg")
        assert root.findtext("source/database") == "ImageNet database"
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == r.size
        assert root.findtext("segment") == "0"
        objects = root.findall("object")
        n_objects.append(len(objects))
        boxes = []
        for obj in objects:
            assert obj.findtext("name") == r.class_name and obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") == "0" and obj.findtext("difficult") == "0"
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        assert r.box == tuple(float(v) for v in union)
        _check_image(images[f"Images/{r.source}"], r)
    assert max(n_objects) == 2
    assert {"gray", "cmyk", "png_as_jpg", "rgb"} == {r.kind for r in f.records}


def test_dogs_lists_mat(fx):
    f = fx["dogs"]
    lists = _tar_files(f.files["lists.tar"])
    assert set(lists) == {"file_list.mat", "train_list.mat", "test_list.mat"}
    for member, records in (("file_list.mat", f.records), ("train_list.mat", f.by_split("train")),
                            ("test_list.mat", f.by_split("test"))):
        assert lists[member].startswith(b"MATLAB 5.0 MAT-file")
        raw = scipy.io.loadmat(io.BytesIO(lists[member]))
        n = len(records)
        assert raw["file_list"].shape == (n, 1) and raw["file_list"].dtype == object
        assert raw["file_list"][0, 0].shape == (1,) and isinstance(raw["file_list"][0, 0][0], str)
        assert raw["annotation_list"].shape == (n, 1)
        assert raw["labels"].shape == (n, 1) and raw["labels"].dtype == np.float64
        assert [c[0] for c in raw["file_list"][:, 0]] == [r.source for r in records]
        assert [c[0] for c in raw["annotation_list"][:, 0]] == [r.source[:-4] for r in records]
        assert raw["labels"][:, 0].tolist() == [r.label + 1 for r in records]
        sq = scipy.io.loadmat(io.BytesIO(lists[member]), squeeze_me=True)
        assert sq["file_list"].tolist() == [r.source for r in records]
        assert sq["labels"].tolist() == [r.label + 1.0 for r in records]


# ----------------------------------------------------------------------------- Cars


def test_cars_original_packaging(fx, tmp_path):
    f = fx["cars"]
    assert set(f.files) == {"cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat"}
    devkit = _tar_files(f.files["car_devkit.tgz"])
    assert set(devkit) == {f"devkit/{n}" for n in ("cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat",
                                                   "README.txt", "eval_train.m", "train_perfect_preds.txt")}
    meta = scipy.io.loadmat(io.BytesIO(devkit["devkit/cars_meta.mat"]))
    assert meta["class_names"].shape == (1, 3)
    assert scipy.io.loadmat(io.BytesIO(devkit["devkit/cars_meta.mat"]), squeeze_me=True)["class_names"].tolist() == [
        "AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"] == f.classes

    mats = {"train": devkit["devkit/cars_train_annos.mat"], "test": f.files["cars_test_annos_withlabels.mat"].read_bytes()}
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    for split, data in mats.items():
        records = f.by_split(split)
        images = _tar_files(f.files[f"cars_{split}.tgz"])
        assert set(images) == {r.source for r in records}
        assert [r.source for r in records] == [f"cars_{split}/{i:05d}.jpg" for i in range(1, len(records) + 1)]
        raw = scipy.io.loadmat(io.BytesIO(data))["annotations"]
        assert raw.shape == (1, len(records)) and raw.dtype.names == fields
        assert raw[0, 0]["class"].dtype == np.uint8 and raw[0, 0]["class"].shape == (1, 1)
        ann = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["annotations"]
        assert ann["class"].tolist() == [r.label + 1 for r in records]  # the documented reading
        assert ann["fname"].tolist() == [r.source.split("/")[1] for r in records]
        for a, r in zip(ann, records, strict=True):
            box = (int(a["bbox_x1"]) - 1, int(a["bbox_y1"]) - 1, int(a["bbox_x2"]), int(a["bbox_y2"]))
            assert r.box == tuple(float(v) for v in box)
            _check_image(images[r.source], r)
    unlabelled = scipy.io.loadmat(io.BytesIO(devkit["devkit/cars_test_annos.mat"]), squeeze_me=True)["annotations"]
    assert unlabelled.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname")
    preds = devkit["devkit/train_perfect_preds.txt"].decode().split()
    assert [int(p) for p in preds] == [r.label + 1 for r in f.by_split("train")]

    # torchvision's StanfordCars reads the same files once unpacked in its layout.
    from torchvision.datasets import StanfordCars

    base = tmp_path / "stanford_cars"
    for name in ("car_devkit.tgz", "cars_train.tgz", "cars_test.tgz"):
        with tarfile.open(f.files[name]) as tar:
            tar.extractall(base, filter="data")
    (base / "cars_test_annos_withlabels.mat").write_bytes(mats["test"])
    for split in ("train", "test"):
        ds = StanfordCars(tmp_path, split=split, loader=lambda p: p)
        assert ds.classes == f.classes
        assert [(Path(p).relative_to(base).as_posix(), t) for p, t in ds] == [
            (r.source, r.label) for r in f.by_split(split)]


def test_cars_car_ims_packaging(tmp_path):
    f = write_cars(tmp_path, packaging="car_ims")
    assert set(f.files) == {"car_ims.tgz", "cars_annos.mat"}
    images = _tar_files(f.files["car_ims.tgz"])
    assert set(images) == {r.source for r in f.records}
    assert [r.source for r in f.records] == [f"car_ims/{i:06d}.jpg" for i in range(1, 13)]
    mat = scipy.io.loadmat(f.files["cars_annos.mat"], squeeze_me=True)
    ann = mat["annotations"]
    assert ann.dtype.names == ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    assert mat["class_names"].tolist() == f.classes
    assert ann["relative_im_path"].tolist() == [r.source for r in f.records]
    assert ann["class"].tolist() == [r.label + 1 for r in f.records]
    assert ann["test"].tolist() == [int(r.split == "test") for r in f.records]
    for a, r in zip(ann, f.records):
        assert r.box == (a["bbox_x1"] - 1.0, a["bbox_y1"] - 1.0, float(a["bbox_x2"]), float(a["bbox_y2"]))
        _check_image(images[r.source], r)
    with pytest.raises(ValueError, match="packaging"):
        write_cars(tmp_path, packaging="nested")


# ---------------------------------------------------------------------------- Plant


def test_plant_zip(fx):
    f = fx["plant"]
    z = zipfile.ZipFile(f.files["plant-pathology-2020-fgvc7.zip"])
    names = set(z.namelist())
    assert names == ({"train.csv", "test.csv", "sample_submission.csv"} | {r.source for r in f.records}
                     | set(f.unlabelled))
    assert f.classes == ["healthy", "multiple_diseases", "rust", "scab"]
    train = list(csv.reader(io.StringIO(z.read("train.csv").decode())))
    assert train[0] == ["image_id", "healthy", "multiple_diseases", "rust", "scab"]
    assert [row[0] for row in train[1:]] == [f"Train_{i}" for i in range(len(f.records))]
    for row, r in zip(train[1:], f.records, strict=True):
        onehot = [int(v) for v in row[1:]]
        assert sum(onehot) == 1 and onehot.index(1) == r.label and r.class_name == f.classes[r.label]
        assert r.source == f"images/{row[0]}.jpg" and r.split == "train" and r.box is None
        _check_image(z.read(r.source), r)
    assert sorted(np.bincount([r.label for r in f.records]).tolist()) == [5, 5, 5, 5]
    assert len({r.label for r in f.records[:4]}) > 1  # rows are not grouped by class
    test = z.read("test.csv").decode().splitlines()
    assert test[0] == "image_id" and [f"images/{t}.jpg" for t in test[1:]] == f.unlabelled
    sub = list(csv.reader(io.StringIO(z.read("sample_submission.csv").decode())))
    assert sub[0] == train[0] and all(row[1:] == ["0.25"] * 4 for row in sub[1:]) and len(sub) == len(test)
    for name in f.unlabelled:
        assert _decode(z.read(name)).format == "JPEG"


# ------------------------------------------------------------------- corrupt, determinism


def test_corrupt_images_are_listed_but_undecodable(fx_corrupt):
    for name, f in fx_corrupt.items():
        bad = [r for r in f.records if r.kind == "corrupt"]
        assert len(bad) == 2, name
    cub = _tar_files(fx_corrupt["cub"].files["CUB_200_2011.tgz"])
    listed = cub["CUB_200_2011/images.txt"].decode()
    dogs = _tar_files(fx_corrupt["dogs"].files["images.tar"])
    dog_ann = _tar_files(fx_corrupt["dogs"].files["annotation.tar"])
    cars = {**_tar_files(fx_corrupt["cars"].files["cars_train.tgz"]),
            **_tar_files(fx_corrupt["cars"].files["cars_test.tgz"])}
    plant = zipfile.ZipFile(fx_corrupt["plant"].files["plant-pathology-2020-fgvc7.zip"])
    blobs = []
    for r in fx_corrupt["cub"].records:
        if r.kind == "corrupt":
            assert f" {r.source}\n" in listed
            blobs.append(cub["CUB_200_2011/images/" + r.source])
    for r in fx_corrupt["dogs"].records:
        if r.kind == "corrupt":
            assert f"Annotation/{r.source[:-4]}" in dog_ann
            blobs.append(dogs["Images/" + r.source])
    blobs += [cars[r.source] for r in fx_corrupt["cars"].records if r.kind == "corrupt"]
    blobs += [plant.read(r.source) for r in fx_corrupt["plant"].records if r.kind == "corrupt"]
    assert len(blobs) == 8
    for data in blobs:
        with pytest.raises(OSError):  # UnidentifiedImageError is an OSError too
            _decode(data)
    ann = scipy.io.loadmat(fx_corrupt["cars"].files["cars_test_annos_withlabels.mat"], squeeze_me=True)["annotations"]
    assert len(ann) == len(fx_corrupt["cars"].by_split("test"))


def test_writing_is_deterministic(tmp_path, fx):
    again = write_all(tmp_path / "a")
    for name, f in fx.items():
        assert again[name].records == f.records
        for fname, path in f.files.items():
            assert sha256(again[name].files[fname]) == sha256(path), fname
    other = write_cub(tmp_path / "b", seed=1)
    assert sha256(other.files["CUB_200_2011.tgz"]) != sha256(fx["cub"].files["CUB_200_2011.tgz"])
    assert [r.size for r in other.records] != [r.size for r in fx["cub"].records]


def test_sizes_vary_and_counts_follow_arguments(tmp_path):
    f = write_dogs(tmp_path / "d", classes=5, per_class=3)
    assert len(f.classes) == 5 and len(f.records) == 15
    assert len({r.size for r in f.records}) > 10
    p = write_plant(tmp_path / "p", per_class=2)
    assert len(p.records) == 8
    with pytest.raises(ValueError, match="classes"):
        write_cub(tmp_path / "c", classes=0)


def test_main_writes_and_reports(tmp_path, capsys):
    fixtures_main([str(tmp_path), "--per-class", "2"])
    out = capsys.readouterr().out
    for f in ("CUB_200_2011.tgz", "images.tar", "cars_test_annos_withlabels.mat", "plant-pathology-2020-fgvc7.zip"):
        assert f in out
    assert sha256(tmp_path / "cub" / "CUB_200_2011.tgz") in out


# --------------------------------------------------------------------------- server


def _get(url: str, headers: dict | None = None, method: str = "GET"):
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}, method=method), timeout=10)


def _error(url: str, headers: dict | None = None) -> urllib.error.HTTPError:
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(url, headers)
    return info.value


BODY = bytes(range(256)) * 400  # 102,400 bytes


def test_server_get_head_and_ranges(tmp_path):
    (tmp_path / "f.bin").write_bytes(BODY)
    with FileServer({"CUB_200_2011.tgz": BODY, "sub/f.bin": tmp_path / "f.bin"}) as srv:
        with _get(srv.url("CUB_200_2011.tgz")) as r:
            assert r.status == 200 and r.read() == BODY
            assert r.headers["Content-Length"] == str(len(BODY)) and r.headers["Accept-Ranges"] == "bytes"
        with _get(srv.url("sub/f.bin"), method="HEAD") as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(len(BODY)) and r.read() == b""
        with _get(srv.url("sub/f.bin"), {"Range": "bytes=1000-"}) as r:
            assert r.status == 206 and r.read() == BODY[1000:]
            assert r.headers["Content-Range"] == f"bytes 1000-{len(BODY) - 1}/{len(BODY)}"
            assert r.headers["Content-Length"] == str(len(BODY) - 1000)
        err = _error(srv.url("sub/f.bin"), {"Range": f"bytes={len(BODY)}-"})
        assert err.code == 416 and err.headers["Content-Range"] == f"bytes */{len(BODY)}"
        assert _error(srv.url("missing.tgz")).code == 404
        srv.set_file("CUB_200_2011.tgz", b"other bytes")  # a checksum mismatch
        with _get(srv.url("CUB_200_2011.tgz")) as r:
            assert r.read() == b"other bytes"
        assert [(q.method, q.path, q.status) for q in srv.requests] == [
            ("GET", "/CUB_200_2011.tgz", 200), ("HEAD", "/sub/f.bin", 200), ("GET", "/sub/f.bin", 206),
            ("GET", "/sub/f.bin", 416), ("GET", "/missing.tgz", 404), ("GET", "/CUB_200_2011.tgz", 200)]
        assert srv.requests[2].range == "bytes=1000-"


def test_server_cut_then_resume_with_range():
    with FileServer({"images.tar": BODY}) as srv:
        srv.fault("images.tar", cut_after=5000)
        got = b""
        with _get(srv.url("images.tar")) as r:
            assert r.headers["Content-Length"] == str(len(BODY))  # the full length is advertised
            with pytest.raises(http.client.IncompleteRead) as info:
                r.read()
            got = info.value.partial
        assert got == BODY[:5000]
        with _get(srv.url("images.tar"), {"Range": f"bytes={len(got)}-"}) as r:
            assert r.status == 206 and got + r.read() == BODY
        log = srv.requests_for("images.tar")
        assert [(q.status, q.sent, q.range) for q in log] == [(200, 5000, None), (206, len(BODY) - 5000, "bytes=5000-")]
        # A cut applies to GETs only, and to the first `times` of them.
        srv.fault("images.tar", cut_after=10, times=2)
        with _get(srv.url("images.tar"), method="HEAD") as r:
            assert r.status == 200
        for _ in range(2):
            with _get(srv.url("images.tar")) as r, pytest.raises(http.client.IncompleteRead):
                r.read()
        with _get(srv.url("images.tar")) as r:
            assert r.read() == BODY


def test_server_status_faults():
    with FileServer({"lists.tar": BODY}) as srv:
        srv.fault("lists.tar", status=503, times=2)
        for _ in range(2):
            err = _error(srv.url("lists.tar"))
            assert err.code == 503 and err.headers["Retry-After"] == "0"
        with _get(srv.url("lists.tar")) as r:
            assert r.read() == BODY
        srv.fault("lists.tar", status=404, times=None)
        assert [_error(srv.url("lists.tar")).code for _ in range(3)] == [404] * 3
        srv.clear_faults()
        with _get(srv.url("lists.tar")) as r:
            assert r.status == 200


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _basic(user: str, key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def test_kaggle_api_mimic():
    zip_bytes = b"PK\x03\x04" + BODY
    with FileServer() as srv:
        srv.kaggle_credentials = ("alice", "0123abcd")
        storage = srv.add_kaggle_competition("plant-pathology-2020-fgvc7", data=zip_bytes, rules_accepted=False)
        srv.add_kaggle_dataset("rickyyyyyyy/torchvision-stanford-cars", data=b"PK\x03\x04cars")
        comp = srv.kaggle_api + "/competitions/data/download-all/plant-pathology-2020-fgvc7"
        assert srv.kaggle_api.startswith("http://127.0.0.1:") and srv.kaggle_api.endswith("/api/v1")

        for headers in ({}, _basic("alice", "wrong")):
            err = _error(comp, headers)
            assert err.code == 401 and json.loads(err.read()) == {"code": 401, "message": "Unauthenticated"}
        err = _error(comp, _basic("alice", "0123abcd"))
        assert err.code == 403
        assert json.loads(err.read()) == {
            "code": 403, "message": "You must accept this competition's rules before you'll be able to download files."}
        assert _error(srv.kaggle_api + "/competitions/data/download-all/nope", _basic("alice", "0123abcd")).code == 404

        srv.set_kaggle_rules_accepted("plant-pathology-2020-fgvc7")
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(urllib.request.Request(comp, headers=_basic("alice", "0123abcd")), timeout=10)
        location = info.value.headers["Location"]
        assert info.value.code == 302 and location.startswith(srv.url(storage) + "?")
        with _get(comp, _basic("alice", "0123abcd")) as r:  # urllib follows the redirect
            assert r.read() == zip_bytes and r.headers["Content-Type"] == "application/zip"
            assert 'filename="plant-pathology-2020-fgvc7.zip"' in r.headers["Content-Disposition"]
        with _get(location, {"Range": "bytes=4-"}) as r:  # the storage URL needs no auth
            assert r.status == 206 and r.read() == BODY
        with _get(srv.kaggle_api + "/datasets/download/rickyyyyyyy/torchvision-stanford-cars",
                  _basic("alice", "0123abcd")) as r:
            assert r.read() == b"PK\x03\x04cars"
        api = [q for q in srv.requests if q.path.startswith("/api/v1/")]
        assert api[0].authorization is None and api[1].authorization == _basic("alice", "wrong")["Authorization"]
        assert [q.status for q in api] == [401, 401, 403, 404, 302, 302, 302]
