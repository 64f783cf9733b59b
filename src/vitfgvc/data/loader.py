"""Reading a prepared dataset for training and evaluation.

Augmentation is seeded per sample by ``(seed, epoch, index)``, not by a worker's
global RNG: a sample looks the same whatever the number of data-loader workers,
processes or accumulation steps, and a run resumed mid-epoch sees exactly the
images the uninterrupted run saw. The batches of an epoch are a seeded
permutation cut into global batches; with DDP each process takes every
``world``-th image of each global batch, so the global batch does not depend on
the number of processes either.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config import TransformSection
from ..errors import UserError
from ..images import ImageRejected, open_rgb
from .per_item import eval_view, identity_aug, train_item, train_view

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Draw(enum.IntEnum):
    """The columns of ``draws``: per-sample uniforms in [0, 1) each item carries for the model.

    Seeded with the sample's augmentation, so every random choice the multistage model
    makes for an image (erasing, attention cropping, a random fallback box) is the
    same whatever the number of workers or processes.
    """

    ERASE_A = 0         # stage a (the full image) is attention-erased when < aug.erase_p
    CROP_A = 1          # stage a is attention-cropped when < aug.crop_p
    ERASE_B = 2         # stage b (the object crop) is attention-erased when < aug.erase_p
    CROP_THRESHOLD = 3  # places the attention-crop threshold in aug.crop_threshold
    FALLBACK_BOX = 4    # this and the next 3 columns: a random fallback object box (localize.random_boxes:
                        # area, aspect ratio, left, top), used with multistage.fallback: random


NUM_DRAWS = Draw.FALLBACK_BOX + 4


class ManifestError(UserError, ValueError):
    pass


def read_classes(path: Path) -> list[str]:
    """The class names of a ``classes.csv`` (``label,class_name``), in label order."""
    return pd.read_csv(path).sort_values("label")["class_name"].astype(str).tolist()


@dataclass(frozen=True)
class Manifest:
    root: Path
    table: pd.DataFrame
    classes: list[str]

    @classmethod
    def read(cls, root: str | Path) -> "Manifest":
        root = Path(root)
        path = root / "manifest.csv"
        if not path.exists():
            raise ManifestError(f"{path}: not found; run the prepare stage first")
        table = pd.read_csv(path, keep_default_na=True)
        missing = {"image", "label", "class_name", "split", "x0", "y0", "x1", "y1", "width", "height"} - set(table)
        if missing:
            raise ManifestError(f"{path}: missing columns {sorted(missing)}")
        return cls(root, table, read_classes(root / "classes.csv"))

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name].reset_index(drop=True)


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for one (epoch, sample) pair; ``stream`` separates independent uses."""
    return int(np.random.SeedSequence([seed, epoch, index, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8-range [C, H, W] float in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(-1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(-1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def eval_image(img: Image.Image, size: int, transform: TransformSection | None = None) -> torch.Tensor:
    """The evaluation view of ``transform`` (``eval_view``; default: fastai's centre crop), normalised."""
    return normalize(eval_view(img.convert("RGB"), None, size, transform or TransformSection())[0])


class ManifestDataset(Dataset):
    """Images of one split at ``size`` x ``size``, with label, index, box and per-sample draws.

    Items are ``(image [3, size, size], label, index, box_xyxy [4] in fractions of
    the view (NaN if none or out of the view), draws [NUM_DRAWS] uniforms (columns: :class:`Draw`),
    aug)``. The view is ``transform``'s training view (``train=True``) or its evaluation view;
    see :mod:`vitfgvc.data.per_item`. ``on_device=False``: the image is the finished view,
    normalised (float), and ``aug`` changes nothing. ``on_device=True``: the image is ``uint8``
    ``[size, size, 3]``, the crop before anything else, and ``aug`` (``{"params": [NUM_AUG]}``, plus ``"noise"`` with
    ``transform.noise``) holds the rest, which :func:`vitfgvc.data.on_device.batch_views` applies to
    the batch on the training device. Either way, :func:`~vitfgvc.data.on_device.batch_views` of a
    batch gives the model's input.
    """

    def __init__(self, manifest: Manifest, split: str, size: int, *, train: bool,
                 transform: TransformSection | None = None, seed: int = 0, on_device: bool = False):
        self.root = manifest.root
        self.rows = manifest.split(split)
        if not len(self.rows):
            raise ManifestError(f"{manifest.root / 'manifest.csv'}: the {split!r} split is empty")
        self.size, self.train, self.transform, self.seed = size, train, transform or TransformSection(), seed
        self.on_device = on_device
        self.epoch = 0
        self.labels = self.rows["label"].to_numpy()
        w, h = self.rows["width"].to_numpy(float), self.rows["height"].to_numpy(float)
        self.boxes = self.rows[["x0", "y0", "x1", "y1"]].to_numpy(float) / np.stack([w, h, w, h], 1)
        self.paths = [str(self.root / p) for p in self.rows["image"]]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        try:
            img, _ = open_rgb(self.paths[index])
        except ImageRejected as exc:  # prepare wrote and decoded it: the file changed since
            raise ManifestError(f"{self.paths[index]}: {exc} (run the prepare stage again: "
                                "dvc repro -f prepare@<dataset>)") from None
        w, h = img.size
        box_xyxy = torch.tensor(self.boxes[index] * (w, h, w, h), dtype=torch.float32)
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        draws = torch.rand(NUM_DRAWS, generator=g)
        label = int(self.labels[index])
        if not self.train:
            x, box = eval_view(img, box_xyxy, self.size, self.transform, as_uint8=self.on_device)
            return (x if self.on_device else normalize(x)), label, index, box, draws, {"params": identity_aug()}
        # the box follows the view (diagnostics only: training never reads it)
        if self.on_device:
            x, box, params, noise = train_item(img, box_xyxy, self.size, self.transform, g)
            return x, label, index, box, draws, {"params": params, **({"noise": noise} if noise is not None else {})}
        x, box = train_view(img, box_xyxy, self.size, self.transform, g)
        x = normalize(x)
        if self.transform.noise > 0:
            x = x + self.transform.noise * torch.randn(x.shape, generator=g)
        return x, label, index, box, draws, {"params": identity_aug()}


class EpochBatches(torch.utils.data.Sampler):
    """Micro-batches of indices for one process: seeded per epoch, resumable at any step.

    Each epoch is a permutation of the dataset seeded by ``(seed, epoch)``, cut
    into ``n // batch`` global batches (the last partial one is dropped). Process
    ``rank`` takes ``global[rank::world]`` and yields it as ``accum`` micro-batches.
    """

    def __init__(self, n: int, batch: int, *, seed: int, rank: int = 0, world: int = 1, accum: int = 1,
                 limit: int = 0):
        if batch % (world * accum):
            raise ManifestError(f"train.batch_size ({batch}) must be divisible by runtime.accum_steps x runtime.nproc "
                                f"({accum} x {world})")
        if n < batch:
            raise ManifestError(f"the train split has {n} images, fewer than train.batch_size ({batch})")
        self.n, self.batch, self.seed, self.rank, self.world, self.accum = n, batch, seed, rank, world, accum
        self.limit = limit  # > 0: an epoch stops after this many steps (a rehearsal)
        self.epoch, self.start_step = 0, 0

    @property
    def steps(self) -> int:
        return min(self.n // self.batch, self.limit) if self.limit else self.n // self.batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum

    def __iter__(self):
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0, stream=1))
        perm = torch.randperm(self.n, generator=g).tolist()
        for step in range(self.start_step, self.steps):
            mine = perm[step * self.batch:(step + 1) * self.batch][self.rank::self.world]
            size = len(mine) // self.accum
            for a in range(self.accum):
                yield mine[a * size:(a + 1) * size]
