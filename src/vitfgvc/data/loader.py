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
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config import TransformSection
from ..errors import UserError

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


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def eval_image(img: Image.Image, size: int) -> torch.Tensor:
    """The evaluation view: the whole image squashed to ``size`` x ``size``, normalised."""
    return normalize(to_tensor(img.convert("RGB").resize((size, size), Image.BILINEAR)))


def _rrc_box(w: int, h: int, scale, ratio, g: torch.Generator) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop parameters, drawn from ``g``: (left, top, right, bottom)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=g).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            return left, top, left + cw, top + ch
    # fallback: the central crop at the nearest allowed aspect ratio
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


class ManifestDataset(Dataset):
    """Images of one split at ``size`` x ``size``, with label, index, box and per-sample draws.

    Items are ``(image [3, size, size], label, index, box_xyxy [4] in fractions of
    the image (NaN if none), draws [NUM_DRAWS] uniforms (columns: :class:`Draw`))``.
    """

    def __init__(self, manifest: Manifest, split: str, size: int, *, train: bool,
                 transform: TransformSection | None = None, seed: int = 0):
        self.root = manifest.root
        self.rows = manifest.split(split)
        if not len(self.rows):
            raise ManifestError(f"{manifest.root / 'manifest.csv'}: the {split!r} split is empty")
        self.size, self.train, self.transform, self.seed = size, train, transform or TransformSection(), seed
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
        with Image.open(self.paths[index]) as im:
            img = im.convert("RGB")
        box = torch.tensor(self.boxes[index], dtype=torch.float32)
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        draws = torch.rand(NUM_DRAWS, generator=g)
        if not self.train:
            return eval_image(img, self.size), int(self.labels[index]), index, box, draws
        t = self.transform
        w, h = img.size
        left, top, right, bottom = _rrc_box(w, h, t.rrc_scale, (3 / 4, 4 / 3), g)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, right, bottom))
        # the box follows the crop (used for diagnostics only; training never reads it)
        box = (box * torch.tensor([w, h, w, h]) - torch.tensor([left, top, left, top])) / torch.tensor(
            [right - left, bottom - top, right - left, bottom - top])
        if float(torch.rand(1, generator=g)) < t.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            box = torch.stack([1 - box[2], box[1], 1 - box[0], box[3]])
        x = normalize(to_tensor(img))
        if t.noise > 0:
            x = x + t.noise * torch.randn(x.shape, generator=g)
        return x, int(self.labels[index]), index, box.clamp(0, 1), draws


class EpochBatches(torch.utils.data.Sampler):
    """Micro-batches of indices for one process: seeded per epoch, resumable at any step.

    Each epoch is a permutation of the dataset seeded by ``(seed, epoch)``, cut
    into ``n // batch`` global batches (the last partial one is dropped). Process
    ``rank`` takes ``global[rank::world]`` and yields it as ``accum`` micro-batches.
    """

    def __init__(self, n: int, batch: int, *, seed: int, rank: int = 0, world: int = 1, accum: int = 1):
        if batch % (world * accum):
            raise ManifestError(f"train.batch_size ({batch}) must be divisible by train.accum_steps x train.nproc "
                                f"({accum} x {world})")
        if n < batch:
            raise ManifestError(f"the train split has {n} images, fewer than train.batch_size ({batch})")
        self.n, self.batch, self.seed, self.rank, self.world, self.accum = n, batch, seed, rank, world, accum
        self.epoch, self.start_step = 0, 0

    @property
    def steps(self) -> int:
        return self.n // self.batch

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
