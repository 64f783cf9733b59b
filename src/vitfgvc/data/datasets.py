"""The parser of each dataset format's annotation files.

The formats themselves (names, titles, original files, options) are facts in
:mod:`vitfgvc.data.registry`; here is how each one's files are read, looked up by
:func:`parser`. A parser takes the extracted tree (``data/raw/<name>/``, or any folder
holding the same files, however nested) and returns every labelled image with
its 0-based label, class name, official split and object box in original pixels
``(x0, y0, x1, y1)``, x1/y1 exclusive. Original files count from 1 (labels,
ids, and the inclusive pixel boxes of Dogs, Cars and Aircraft); conversion
happens here and nowhere else.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import UserError
from ..io import file_hashes
from .registry import AIRCRAFT_LEVELS, FormatOptions, is_inside, spec

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
    trim_bottom: int = 0  # rows cut off the bottom before anything else (FGVC-Aircraft's copyright banner)


@dataclass(frozen=True)
class Parsed:
    records: list[Record]
    classes: list[str]  # class names in label order
    dropped: tuple[tuple[Record, str], ...] = ()  # images left out, with the reason (e.g. a duplicate)
    annotations: tuple[Path, ...] = ()  # the annotation files read (a user's CSV)

    @property
    def has_test(self) -> bool:
        """Whether the images come with their own test split."""
        return any(r.split == "test" for r in self.records)


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
def parse_cub(root: Path, opts: FormatOptions = FormatOptions()) -> Parsed:
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


def parse_dogs(root: Path, opts: FormatOptions = FormatOptions()) -> Parsed:
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


def parse_cars(root: Path, opts: FormatOptions = FormatOptions()) -> Parsed:
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


def parse_plant(root: Path, opts: FormatOptions = FormatOptions()) -> Parsed:
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


# --------------------------------------------------------------------- Aircraft
AIRCRAFT_BANNER = 20  # px: the copyright banner at the bottom of every image, which the dataset's README says to remove


def parse_aircraft(root: Path, opts: FormatOptions = FormatOptions()) -> Parsed:
    """FGVC-Aircraft 2013b at ``opts.level``: the official ``trainval`` images train, ``test`` tests."""
    hint = "expected the extracted fgvc-aircraft-2013b.tar.gz"
    data = find(root, "images_box.txt", dataset="aircraft", hint=hint).parent
    class_file = data / AIRCRAFT_LEVELS[opts.level]
    if not class_file.is_file():
        raise DatasetFormatError(f"aircraft: {class_file} not found ({hint})")
    classes = [line.strip() for line in class_file.read_text().splitlines() if line.strip()]
    index = {c: i for i, c in enumerate(classes)}
    boxes = {i: (float(x0) - 1, float(y0) - 1, float(x1), float(y1))  # 1-based, inclusive
             for i, x0, y0, x1, y1 in _read_table(data / "images_box.txt", 5, "aircraft")}
    records = []
    for split, listed in (("train", "trainval"), ("test", "test")):
        path = data / f"images_{opts.level}_{listed}.txt"
        for n, (image_id, name) in enumerate(_read_table(path, 2, "aircraft"), 1):
            if name not in index:
                raise DatasetFormatError(f"aircraft: {path}:{n}: {name!r} is not listed in {class_file.name}")
            records.append(Record(data / "images" / f"{image_id}.jpg", f"images/{image_id}.jpg", index[name], name,
                                  split, boxes.get(image_id), trim_bottom=AIRCRAFT_BANNER))
    return Parsed(records, classes)


# ------------------------------------------------------------ a user's own images
# The suffixes torchvision's ImageFolder reads
IMAGE_SUFFIXES = frozenset((".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"))
SPLIT_ORDER = {"train": 0, "test": 1}


def _within(path: Path, root: Path, dataset: str, what: str) -> Path:
    """``path``, refused when it (or a symlink on the way) leads outside ``root``."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise DatasetFormatError(f"{dataset}: {what} {path} leads outside the dataset folder {root} "
                                 f"(to {real}); copy the file into the folder instead")
    return path


def _without_duplicates(records: list[Record]) -> tuple[list[Record], tuple[tuple[Record, str], ...]]:
    """Keep one copy of each identical file (its train copy first), so that no image sits in train and test."""
    kept: dict[str, Record] = {}
    dropped = []
    for r in sorted(records, key=lambda r: (SPLIT_ORDER.get(r.split, 2), r.source)):
        if not r.path.is_file():
            kept[f"missing:{r.source}"] = r  # the parser named it already; prepare rejects it
            continue
        first = kept.setdefault(file_hashes(r.path)["sha256"], r)
        if first is not r:
            why = f"the same file as {first.source} ({first.split}"
            why += f", labelled {first.class_name})" if first.label != r.label else ")"
            dropped.append((r, why))
    keep = {id(r) for r in kept.values()}
    return [r for r in records if id(r) in keep], tuple(dropped)


def _descend(root: Path) -> Path:
    """Past folders that hold nothing but one folder (an archive's top-level directory), stopping at
    ``train``/``test`` and at a folder of images (a lone class)."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in SPLIT_ORDER or \
                any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries[0].iterdir()):
            return root
        root = entries[0]


def _images_under(folder: Path, root: Path, dataset: str) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        _within(here, root, dataset, "folder")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                files.append(_within(here / f, root, dataset, "image"))
    return files


def parse_imagefolder(root: Path, opts: FormatOptions = FormatOptions()) -> Parsed:
    """``train/<class>/*`` and ``test/<class>/*``, or ``<class>/*`` alone (split by ``test_fraction``).

    Class names are the sorted folder names of train (torchvision's ImageFolder
    order); images are the files with an image suffix, in sub-folders too.
    """
    root = _descend(root)
    layout = "train/<class>/ and test/<class>/, or <class>/ alone"
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        raise DatasetFormatError(f"imagefolder: {root} has {'train/' if has_train else 'test/'} but no "
                                 f"{'test/' if has_train else 'train/'} (expected {layout})")
    splits = {"train": root / "train", "test": root / "test"} if has_train else {"train": root}

    def class_dirs(folder: Path) -> list[Path]:
        return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)

    classes = [p.name for p in class_dirs(splits["train"])]
    if len(classes) < 2:
        raise DatasetFormatError(f"imagefolder: {splits['train']} holds {len(classes)} class folder(s); expected "
                                 f"at least two ({layout})")
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for split, folder in splits.items():
        for class_dir in class_dirs(folder):
            if class_dir.name not in index:
                raise DatasetFormatError(f"imagefolder: class {class_dir.name!r} ({class_dir}) is in test but not in "
                                         f"train; every test class needs training images")
            images = _images_under(class_dir, root, "imagefolder")
            if not images:
                raise DatasetFormatError(f"imagefolder: {class_dir} holds no image (expected files ending in "
                                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            for path in images:
                records.append(Record(path, path.relative_to(root).as_posix(), index[class_dir.name],
                                      class_dir.name, split, None))
    records, dropped = _without_duplicates(records)
    return Parsed(records, classes, dropped)


CSV_BOX = ["x0", "y0", "x1", "y1"]


def _csv_errors(path: Path, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DatasetFormatError(f"csv: {path}: " + "; ".join(problems[:5]) + more)


def _read_csv(path: Path):
    """Reading: the CSV's cells as strings, its column names stripped. Refused when it is not a readable CSV, has
    no ``image`` column or neither ``label`` nor ``class_name``, or names only part of a box."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - pandas raises several types for a bad file
        raise DatasetFormatError(f"csv: {path}: not a readable CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if "image" not in table.columns or not {"label", "class_name"} & set(table.columns):
        raise DatasetFormatError(f"csv: {path}: expected the columns image and label and/or class_name (optional: "
                                 f"split, {', '.join(CSV_BOX)}), got {', '.join(table.columns)}")
    has_box = [c for c in CSV_BOX if c in table.columns]
    if has_box and len(has_box) != 4:
        raise DatasetFormatError(f"csv: {path}: a box needs all of {', '.join(CSV_BOX)}, got only {', '.join(has_box)}")
    return table


def _csv_labels(path: Path, table) -> tuple[list, list[str], dict[str, int]]:
    """Labelling: each row's class name, the class names in label order, and the 0-based label of each name.

    With a ``label`` column the labels keep their own numeric order (without ``class_name``, a label is its own
    name); refused when a label is not a non-negative integer or names two classes. Without one, the class
    names are sorted. Rows are numbered as lines of the file (the header is line 1)."""
    import pandas as pd

    if "label" not in table.columns:
        names = table["class_name"]
        classes = sorted(set(names))
        return names, classes, {c: j for j, c in enumerate(classes)}
    labels = pd.to_numeric(table["label"], errors="coerce")
    _csv_errors(path, [f"line {i + 2}: label {table['label'].iat[i]!r} is not a non-negative integer"
                       for i in np.flatnonzero(labels.isna() | (labels % 1 != 0) | (labels < 0))])
    names = table["class_name"] if "class_name" in table.columns else labels.astype(int).astype(str)
    by_label: dict[int, str] = {}
    problems = []
    for i, (lab, name) in enumerate(zip(labels.astype(int), names)):
        if by_label.setdefault(lab, name) != name:
            problems.append(f"line {i + 2}: label {lab} is {name!r} here and {by_label[lab]!r} before")
    _csv_errors(path, problems)
    order = sorted(by_label)
    return names, [by_label[k] for k in order], {by_label[k]: j for j, k in enumerate(order)}


def _csv_class_problems(names, classes: list[str]) -> list[str]:
    """Validating the classes: every row names one (no empty class name), and there are at least two."""
    problems = [f"line {i + 2}: empty class name" for i, name in enumerate(names) if not str(name).strip()]
    if len(classes) < 2:
        problems.append(f"{len(classes)} class(es); expected at least two")
    return problems


def _csv_image_problem(base: Path, rel: str, split: str) -> str | None:
    """Validating a row's split and image: train or test, and a file inside the CSV's folder (no link leading
    out of it). What is wrong, or None."""
    if split not in SPLIT_ORDER:
        return f"split {split!r} is not train or test"
    if not is_inside(rel):
        return f"image {rel!r} is not a path inside {base}"
    if not (base / rel).is_file():
        return f"image {rel!r} not found in {base}"
    try:
        _within(base / rel, base, "csv", "image")
    except DatasetFormatError as exc:
        return str(exc)
    return None


def _csv_box(image: Path, rel: str, cells: list[str]) -> tuple[Box | None, str | None]:
    """Validating a row's box: none when its four cells are empty, else four numbers with x0 < x1 and y0 < y1,
    inside the image when it opens (an undecodable image is prepare's to reject, with its reason).
    ``(box, None)``, or ``(None, what is wrong)``."""
    from PIL import Image

    if not any(cells):
        return None, None
    try:
        box = tuple(float(c) for c in cells)
    except ValueError:
        return None, f"box {cells} is not four numbers"
    try:
        with Image.open(image) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - an undecodable image is prepare's to reject, with its reason
        w = h = None
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1) or (w is not None and (x0 < 0 or y0 < 0 or x1 > w or y1 > h)):
        size = f"the {w}x{h} image" if w is not None else "the image"
        return None, (f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside {size} {rel!r} "
                      f"(expected 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)")
    return box, None


def _csv_records(path: Path, table, names, label_of: dict[str, int]) -> tuple[list[Record], list[str]]:
    """Validating the rows: the record of each row whose split, image and box pass, and a problem (naming the
    line) for each that does not."""
    import pandas as pd

    base, has_box = path.parent, set(CSV_BOX) <= set(table.columns)
    splits = table["split"].str.strip().str.lower() if "split" in table.columns else pd.Series(["train"] * len(table))
    records, problems = [], []
    for i, (rel, name, split) in enumerate(zip(table["image"], names, splits)):
        rel = rel.strip()
        box, problem = None, _csv_image_problem(base, rel, split)
        if problem is None and has_box:
            box, problem = _csv_box(base / rel, rel, [str(table[c].iat[i]).strip() for c in CSV_BOX])
        if problem is not None:
            problems.append(f"line {i + 2}: {problem}")
            continue
        records.append(Record(base / rel, PurePosixPath(rel).as_posix(), label_of[name], str(name), split, box))
    return records, problems


def _check_csv_records(path: Path, records: list[Record]) -> None:
    """Validating the whole list: every class with test images has training images, no image is listed twice."""
    test_only = sorted({r.class_name for r in records if r.split == "test"}
                       - {r.class_name for r in records if r.split == "train"})
    if test_only:
        raise DatasetFormatError(f"csv: {path}: the classes {test_only} have test images but no training image")
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if seen.setdefault(r.source, i) != i:
            raise DatasetFormatError(f"csv: {path}: image {r.source!r} is listed twice")


def parse_csv(root: Path, opts: FormatOptions = FormatOptions()) -> Parsed:
    """A CSV of ``image`` (relative to the CSV), ``label`` and/or ``class_name``, optional ``split``
    (train | test) and optional ``x0, y0, x1, y1`` (a box in pixels, x1/y1 exclusive).

    Read (:func:`_read_csv`), labelled (:func:`_csv_labels`), then validated: the classes and every row,
    whose problems are reported together (the first five), then the list as a whole; last, identical files
    are kept once (:func:`_without_duplicates`)."""
    path = find(root, opts.annotations, dataset="csv", hint="set datasets.<name>.options.annotations to its name")
    table = _read_csv(path)
    names, classes, label_of = _csv_labels(path, table)
    records, row_problems = _csv_records(path, table, names, label_of)
    _csv_errors(path, _csv_class_problems(names, classes) + row_problems)
    _check_csv_records(path, records)
    records, dropped = _without_duplicates(records)
    return Parsed(records, classes, dropped, (path,))


# ----------------------------------------------------------------------- the parsers by format
Parser = Callable[[Path, FormatOptions], Parsed]
PARSERS: dict[str, Parser] = {
    "cub": parse_cub, "dogs": parse_dogs, "cars": parse_cars, "plant": parse_plant, "aircraft": parse_aircraft,
    "imagefolder": parse_imagefolder, "csv": parse_csv,
}  # every format of the registry but the synthetic digits (data/digits.py draws them; nothing to parse)


def parser(fmt: str) -> Parser | None:
    """The parser of a format's files; None for a synthetic format. An unknown format: the registry's ValueError."""
    return None if spec(fmt).synthetic else PARSERS[fmt]
