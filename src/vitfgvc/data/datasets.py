"""One place per dataset: its original files, and the parser of its annotation files.

A parser takes the extracted tree (``data/raw/<name>/``, or any folder holding
the same files, however nested) and returns every labelled image with its
0-based label, class name, official split and object box in original pixels
``(x0, y0, x1, y1)``, x1/y1 exclusive. Original files count from 1 (labels,
ids, and the inclusive pixel boxes of Dogs and Cars); conversion happens here
and nowhere else.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

Box = tuple[float, float, float, float]


class DatasetFormatError(UserError, ValueError):
    """The files of a dataset are missing or not in the documented format."""


@dataclass(frozen=True)
class Record:
    path: Path          # the image file to decode
    source: str         # its original relative path inside the dataset
    label: int          # 0-based
    class_name: str
    split: str          # "train" | "test" (the official split; Plant Pathology: all "train")
    box: Box | None     # original pixels, x1/y1 exclusive


@dataclass(frozen=True)
class Parsed:
    records: list[Record]
    classes: list[str]  # class names in label order


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str              # as the reports print it
    packagings: tuple[tuple[str, ...], ...]  # alternative sets of original file names
    official_test: bool
    parse: Callable[[Path], Parsed] | None
    homepage: str
    synthetic: bool = False
    auc: bool = False       # also report the mean column-wise ROC AUC (the competition's metric)
    notes: tuple[str, ...] = field(default=())
    images: int = 0         # labelled images of the real dataset (what a rehearsal extrapolates to)
    test_images: int = 0    # of which the official test split (0: split by the profile's test_fraction)


# ----------------------------------------------------------------------- helpers
def find(root: Path, name: str, *, dir: bool = False, dataset: str = "", hint: str = "") -> Path:
    """The shallowest file (or folder) called ``name`` under ``root``."""
    hits = [p for p in root.rglob(name) if (p.is_dir() if dir else p.is_file())]
    if not hits:
        what = "folder" if dir else "file"
        raise DatasetFormatError(f"{dataset}: no {what} named {name!r} under {root}" + (f" ({hint})" if hint else ""))
    return min(hits, key=lambda p: (len(p.relative_to(root).parts), str(p)))


def _read_table(path: Path, ncols: int, dataset: str) -> list[list[str]]:
    if not path.is_file():
        raise DatasetFormatError(f"{dataset}: {path} not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(" ", ncols - 1) if ncols else line.split()
        if len(parts) != ncols:
            raise DatasetFormatError(f"{dataset}: {path}:{n}: expected {ncols} space-separated fields, got {line!r}")
        rows.append(parts)
    return rows


def _mat(path: Path):
    from scipy.io import loadmat

    try:
        return loadmat(path, squeeze_me=True)
    except Exception as exc:  # scipy raises several types for a bad file
        raise DatasetFormatError(f"{path}: not a readable MATLAB file: {exc}") from None


def _strings(values) -> list[str]:
    return [str(v) for v in np.atleast_1d(values)]


def _union(boxes: list[Box]) -> Box | None:
    if not boxes:
        return None
    a = np.asarray(boxes, dtype=float)
    return (a[:, 0].min(), a[:, 1].min(), a[:, 2].max(), a[:, 3].max())


# -------------------------------------------------------------------------- CUB
def parse_cub(root: Path) -> Parsed:
    hint = "expected the extracted CUB_200_2011.tgz"
    base = find(root, "images.txt", dataset="cub", hint=hint).parent
    tables = {name: _read_table(base / f"{name}.txt", n, "cub") for name, n in
              (("images", 2), ("image_class_labels", 2), ("train_test_split", 2), ("classes", 2),
               ("bounding_boxes", 5))}
    classes_by_id = {int(i): re.sub(r"^\d+\.", "", name) for i, name in tables["classes"]}
    if sorted(classes_by_id) != list(range(1, len(classes_by_id) + 1)):
        raise DatasetFormatError(f"cub: {base / 'classes.txt'}: class ids must run 1..{len(classes_by_id)}")
    label = {i: int(c) for i, c in tables["image_class_labels"]}
    is_train = {i: s for i, s in tables["train_test_split"]}
    boxes = {i: tuple(float(v) for v in rest) for i, *rest in tables["bounding_boxes"]}
    records = []
    for image_id, rel in tables["images"]:
        try:
            cls = label[image_id]
            split = {"1": "train", "0": "test"}[is_train[image_id]]
        except KeyError:
            raise DatasetFormatError(f"cub: image id {image_id} ({rel}) has no class or split entry") from None
        x, y, w, h = boxes.get(image_id, (None,) * 4)
        box = (x, y, x + w, y + h) if x is not None else None
        records.append(Record(base / "images" / rel, rel, cls - 1, classes_by_id[cls], split, box))
    return Parsed(records, [classes_by_id[i] for i in sorted(classes_by_id)])


# ------------------------------------------------------------------------- Dogs
def _voc_box(path: Path) -> Box | None:
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError):
        return None
    boxes = []
    for bb in tree.iter("bndbox"):
        xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))  # VOC: 1-based, inclusive
    return _union(boxes)


def parse_dogs(root: Path) -> Parsed:
    hint = "expected the extracted images.tar, annotation.tar and lists.tar"
    images = find(root, "Images", dir=True, dataset="dogs", hint=hint)
    annotations = find(root, "Annotation", dir=True, dataset="dogs", hint=hint)
    folder_of: dict[int, str] = {}
    records = []
    for split in ("train", "test"):
        path = find(root, f"{split}_list.mat", dataset="dogs", hint=hint)
        mat = _mat(path)
        try:
            files, labels = _strings(mat["file_list"]), np.atleast_1d(mat["labels"]).astype(int)
        except KeyError as exc:
            raise DatasetFormatError(f"dogs: {path}: missing variable {exc}") from None
        if len(files) != len(labels):
            raise DatasetFormatError(f"dogs: {path}: {len(files)} files but {len(labels)} labels")
        for rel, lab in zip(files, labels):
            folder = rel.split("/")[0]
            if folder_of.setdefault(int(lab), folder) != folder:
                raise DatasetFormatError(f"dogs: {path}: label {lab} used for {folder_of[lab]} and {folder}")
            box = _voc_box(annotations / rel.removesuffix(".jpg"))
            records.append(Record(images / rel, rel, int(lab) - 1, folder.split("-", 1)[-1], split, box))
    n = max(folder_of)
    missing = sorted(set(range(1, n + 1)) - set(folder_of))
    if missing:
        raise DatasetFormatError(f"dogs: labels {missing} have no image in train_list.mat/test_list.mat")
    return Parsed(records, [folder_of[i].split("-", 1)[-1] for i in range(1, n + 1)])


# ------------------------------------------------------------------------- Cars
def _car_box(a) -> Box:
    return (float(a["bbox_x1"]) - 1, float(a["bbox_y1"]) - 1, float(a["bbox_x2"]), float(a["bbox_y2"]))


def _image_dir(root: Path, name: str) -> Path:
    """``cars_train`` holding the JPEGs (some mirrors nest ``cars_train/cars_train``)."""
    dirs = [p for p in root.rglob(name) if p.is_dir() and any(p.glob("*.jpg"))]
    if not dirs:
        raise DatasetFormatError(f"cars: no folder {name!r} with JPEG files under {root} "
                                 f"(expected the extracted {name}.tgz)")
    return min(dirs, key=lambda p: len(p.parts))


def parse_cars(root: Path) -> Parsed:
    if not any(root.rglob("cars_meta.mat")) and any(root.rglob("cars_annos.mat")):
        return _parse_car_ims(root)
    hint = "expected the extracted car_devkit.tgz"
    meta = _mat(find(root, "cars_meta.mat", dataset="cars", hint=hint))
    classes = _strings(meta["class_names"])
    records = []
    for split, annos_name in (("train", "cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        path = find(root, annos_name, dataset="cars", hint=hint if split == "train" else
                    "expected cars_test_annos_withlabels.mat, the test labels published after the challenge")
        annos = np.atleast_1d(_mat(path)["annotations"])
        if "class" not in (annos.dtype.names or ()):
            raise DatasetFormatError(f"cars: {path}: annotations have no 'class' field "
                                     "(cars_test_annos.mat has none: use cars_test_annos_withlabels.mat)")
        folder = _image_dir(root, f"cars_{split}")
        for a in annos:
            cls = int(a["class"])
            records.append(Record(folder / str(a["fname"]), f"cars_{split}/{a['fname']}", cls - 1,
                                  classes[cls - 1], split, _car_box(a)))
    return Parsed(records, classes)


def _parse_car_ims(root: Path) -> Parsed:
    path = find(root, "cars_annos.mat", dataset="cars")
    mat = _mat(path)
    classes = _strings(mat["class_names"])
    base = path.parent
    records = []
    for a in np.atleast_1d(mat["annotations"]):
        rel, cls = str(a["relative_im_path"]), int(a["class"])
        split = "test" if int(a["test"]) else "train"
        records.append(Record(base / rel, rel, cls - 1, classes[cls - 1], split, _car_box(a)))
    return Parsed(records, classes)


# ------------------------------------------------------------------------ Plant
PLANT_CLASSES = ["healthy", "multiple_diseases", "rust", "scab"]


def parse_plant(root: Path) -> Parsed:
    import pandas as pd

    hint = "expected the extracted plant-pathology-2020-fgvc7.zip"
    path = find(root, "train.csv", dataset="plant", hint=hint)
    table = pd.read_csv(path)
    if list(table.columns) != ["image_id", *PLANT_CLASSES]:
        raise DatasetFormatError(f"plant: {path}: expected the columns image_id,{','.join(PLANT_CLASSES)}, "
                                 f"got {','.join(map(str, table.columns))}")
    onehot = table[PLANT_CLASSES].to_numpy()
    bad = np.flatnonzero(onehot.sum(1) != 1)
    if len(bad):
        raise DatasetFormatError(f"plant: {path}: row {bad[0] + 2} is not one-hot: {table.iloc[bad[0]].tolist()}")
    labels = onehot.argmax(1)
    images = path.parent / "images"
    records = [Record(images / f"{i}.jpg", f"images/{i}.jpg", int(c), PLANT_CLASSES[c], "train", None)
               for i, c in zip(table["image_id"], labels)]
    return Parsed(records, list(PLANT_CLASSES))


# ----------------------------------------------------------------------- registry
SPECS: dict[str, DatasetSpec] = {
    "cub": DatasetSpec(
        "cub", "CUB-200-2011", (("CUB_200_2011.tgz",),), True, parse_cub,
        "https://www.vision.caltech.edu/datasets/cub_200_2011/", images=11788, test_images=5794),
    "dogs": DatasetSpec(
        "dogs", "Stanford Dogs", (("images.tar", "annotation.tar", "lists.tar"),), True, parse_dogs,
        "http://vision.stanford.edu/aditya86/ImageNetDogs/",
        notes=("Drawn from ImageNet-1k train: ImageNet-pretrained weights have seen its test images.",),
        images=20580, test_images=8580),
    "cars": DatasetSpec(
        "cars", "Stanford Cars",
        (("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat"),
         ("car_ims.tgz", "cars_annos.mat")), True, parse_cars,
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (dead; mirrors on Kaggle)", images=16185,
        test_images=8041),
    "plant": DatasetSpec(
        "plant", "Plant Pathology 2020", (("plant-pathology-2020-fgvc7.zip",),), False, parse_plant,
        "https://www.kaggle.com/competitions/plant-pathology-2020-fgvc7 (FGVC7)", auc=True, images=1821),
    "digits": DatasetSpec(
        "digits", "Cluttered digits", (("digits.csv.gz",),), True, None,
        "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset (scikit-learn's handwritten "
        "digits)", synthetic=True),
}


def spec(name: str) -> DatasetSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(SPECS)}") from None
