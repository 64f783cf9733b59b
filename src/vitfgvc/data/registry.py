"""The registry of dataset facts: each format's name, title, original files, options and homepage.

A format is a named benchmark (``cub``, ``dogs``, ``cars``, ``plant``,
``aircraft``, ``digits``, the pretraining source ``fractals``) or a layout for a user's own images (``imagefolder``,
``csv``). This module states what is known about each and parses nothing, so that
the params schema (:mod:`vitfgvc.config`) and the reports can read it without the
parsers: the parser of each format is looked up in :mod:`vitfgvc.data.datasets`
(:func:`~vitfgvc.data.datasets.parser`), the digits canvases are drawn by
:mod:`vitfgvc.data.digits`. Where the files are fetched from, with their checksums,
is each entry's ``urls`` and ``kaggle`` in ``params.yaml``.

Nothing from ``vitfgvc`` is imported here: it is the ground floor of the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# aircraft's ``level`` option: the class file of each level of the FGVC-Aircraft hierarchy
AIRCRAFT_LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


def is_inside(rel: str) -> bool:
    """Whether a relative path names something inside its folder (no absolute path, no ``..``)."""
    p = PurePosixPath(rel.replace("\\", "/"))
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and not re.match(r"^[A-Za-z]:", rel)


@dataclass(frozen=True)
class FormatOptions:
    """A dataset entry's ``options:``, the keys only some formats read."""

    level: str = "variant"           # aircraft: variant (100 classes) | family (70) | manufacturer (30)
    annotations: str = "labels.csv"  # csv: the CSV file, relative to the dataset's folder

    @classmethod
    def of(cls, fmt: str, options: dict) -> "FormatOptions":
        """Check ``options`` against what format ``fmt`` reads; raise ValueError naming the key."""
        allowed = spec(fmt).options
        bad = sorted(set(options) - set(allowed))
        if bad:
            raise ValueError(f"format {fmt} reads {'the options ' + ', '.join(allowed) if allowed else 'no options'}"
                             f", got {', '.join(bad)}")
        opts = cls(**options)
        if opts.level not in AIRCRAFT_LEVELS:
            raise ValueError(f"level must be one of {', '.join(AIRCRAFT_LEVELS)}, got {opts.level!r}")
        if not isinstance(opts.annotations, str) or not is_inside(opts.annotations):
            raise ValueError(f"annotations must be a file name inside the dataset's folder, got {opts.annotations!r}")
        return opts


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str              # as the reports print it (a user's dataset: its entry's name)
    packagings: tuple[tuple[str, ...], ...]  # alternative sets of original file names
    official_test: bool     # a named benchmark's own test split (a user's layout: whether it has one)
    homepage: str
    synthetic: bool = False  # drawn, not parsed: data/digits.py or data/fractals.py renders it (no parser)
    pretraining: bool = False  # a source for pretrain@ only (pipeline.pretrain), drawn from nothing: no download
    user: bool = False      # a layout for a user's own images, not a named benchmark
    options: tuple[str, ...] = ()  # the FormatOptions keys it reads
    auc: bool = False       # also report the mean column-wise ROC AUC (the competition's metric)
    notes: tuple[str, ...] = field(default=())
    images: int = 0         # labelled images of the real dataset (what a rehearsal extrapolates to)
    test_images: int = 0    # of which the official test split (0: split by the profile's test_fraction)


SPECS: dict[str, DatasetSpec] = {
    "cub": DatasetSpec(
        "cub", "CUB-200-2011", (("CUB_200_2011.tgz",),), True,
        "https://www.vision.caltech.edu/datasets/cub_200_2011/", images=11788, test_images=5794),
    "dogs": DatasetSpec(
        "dogs", "Stanford Dogs", (("images.tar", "annotation.tar", "lists.tar"),), True,
        "http://vision.stanford.edu/aditya86/ImageNetDogs/",
        notes=("Drawn from ImageNet-1k train: ImageNet-pretrained weights have seen its test images.",),
        images=20580, test_images=8580),
    "cars": DatasetSpec(
        "cars", "Stanford Cars",
        (("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat"),
         ("car_ims.tgz", "cars_annos.mat")), True,
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (dead; mirrors on Kaggle)", images=16185,
        test_images=8041),
    "plant": DatasetSpec(
        "plant", "Plant Pathology 2020", (("plant-pathology-2020-fgvc7.zip",),), False,
        "https://www.kaggle.com/competitions/plant-pathology-2020-fgvc7 (FGVC7)", auc=True, images=1821),
    "digits": DatasetSpec(
        "digits", "Cluttered digits", (("digits.csv.gz",),), True,
        "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset (scikit-learn's handwritten "
        "digits)", synthetic=True),
    "fractals": DatasetSpec(
        "fractals", "FractalDB-style fractals", (), True,
        "https://hirokatsukataoka16.github.io/Pretraining-without-Natural-Images/ (FractalDB, Kataoka et al. "
        "ACCV 2020; drawn here from IFS codes, nothing downloaded)", synthetic=True, pretraining=True),
    "aircraft": DatasetSpec(
        "aircraft", "FGVC-Aircraft", (("fgvc-aircraft-2013b.tar.gz",),), True,
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/", options=("level",),
        notes=("The bottom 20 px of every image (a copyright banner) are cut off, as the dataset's README asks.",),
        images=10000, test_images=3333),
    "imagefolder": DatasetSpec(
        "imagefolder", "Your images (folders)", (), False,
        "https://pytorch.org/vision/stable/generated/torchvision.datasets.ImageFolder.html", user=True),
    "csv": DatasetSpec(
        "csv", "Your images (CSV)", (), False, "", user=True, options=("annotations",)),
}
NAMED = tuple(name for name, s in SPECS.items() if not s.user)  # datasets known by name: datasets.<name> reads them


def spec(fmt: str) -> DatasetSpec:
    """The spec of a format (a named dataset's format is its name)."""
    try:
        return SPECS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(SPECS)}") from None
