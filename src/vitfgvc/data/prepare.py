"""The prepare stage: decode every image once, store it at the high-res size, write the manifest.

Output ``data/prepared/<name>/``:

- ``manifest.csv``: ``image`` (relative to the manifest), ``label`` (0-based),
  ``class_name``, ``split`` (train | val | test), ``x0, y0, x1, y1`` (object box
  in pixels of the stored image, empty where the dataset has none), ``source``
  (the original relative path inside the dataset), ``width``, ``height``;
- ``classes.csv`` (``label, class_name``); ``rejected.csv`` (``source, reason``): the images that
  could not be decoded, and the copies of an identical file that a user's dataset lists more than once
  (one copy is kept, its training copy first, so that no image is both trained and tested on);
- ``images/``: RGB JPEGs whose shorter side is at most ``high_res`` (never upscaled, aspect
  kept; a 500x375 image stays as it is, 1024x512 becomes 896x448), so that the square
  ``high_res`` views of training and evaluation are cut from real pixels, not upsampled ones.

The folder is built beside its final place and renamed into it when complete.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..config import Params
from ..errors import UserError
from ..images import MAX_PIXELS, ImageRejected, open_rgb
from ..io import replacing_dir
from . import digits as digits_mod
from . import fractals as fractals_mod
from .datasets import parser
from .splits import stratified_holdout

MANIFEST_COLUMNS = ["image", "label", "class_name", "split", "x0", "y0", "x1", "y1", "source", "width", "height"]


class PrepareError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class _Task:
    src: str
    dst: str
    high_res: int
    quality: int
    trim_bottom: int = 0
    max_pixels: int = MAX_PIXELS


def convert_image(task: _Task) -> tuple[tuple[int, int], tuple[int, int]] | str:
    """Decode (:func:`vitfgvc.images.open_rgb`: the pixel limit, the bottom cut, EXIF orientation, RGB), shrink
    to the stored size, save as JPEG: (original size after the cut, stored size), or the reason it was rejected.

    A rejected image leaves no file behind.
    """
    try:
        rgb, size = open_rgb(task.src, max_pixels=task.max_pixels, fit=task.high_res, trim_bottom=task.trim_bottom)
        rgb.save(task.dst, "JPEG", quality=task.quality)
        return size, rgb.size
    except ImageRejected as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - an encoder or disk failure rejects the image, with its reason
        Path(task.dst).unlink(missing_ok=True)
        return f"cannot store: {type(exc).__name__}: {exc}"


def _stored_name(source: str) -> str:
    return str(PurePosixPath("images") / PurePosixPath(source).with_suffix(".jpg"))


def _pool_map(fn, tasks, workers: int, desc: str, progress: bool, initializer=None, initargs=()):
    bar = tqdm(total=len(tasks), unit="img", desc=desc, disable=not progress, smoothing=0.1)
    try:
        if workers <= 1 or len(tasks) < 2 * workers:
            if initializer:
                initializer(*initargs)
            for t in tasks:
                yield fn(t)
                bar.update()
            return
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
            for result in pool.imap(fn, tasks, chunksize=max(1, min(32, len(tasks) // (8 * workers)))):
                yield result
                bar.update()
    finally:
        bar.close()


def _convert_dataset(name: str, raw: Path, tmp: Path, params: Params, progress: bool):
    cfg = params.dataset(name)
    parsed = parser(params.spec(name).name)(raw, params.options(name))
    tasks, dirs = [], set()
    for r in parsed.records:
        dst = tmp / _stored_name(r.source)
        dirs.add(dst.parent)
        tasks.append(_Task(str(r.path), str(dst), cfg.high_res, params.prepare.jpeg_quality, r.trim_bottom,
                           params.prepare.max_pixels))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    rows, rejected = [], []
    results = _pool_map(convert_image, tasks, params.runtime.prepare_workers, f"prepare {name}", progress)
    for r, result in zip(parsed.records, results):
        if isinstance(result, str):
            rejected.append({"source": r.source, "reason": result})
            continue
        (w, h), (nw, nh) = result
        box = [np.nan] * 4
        if r.box is not None:
            sx, sy = nw / w, nh / h
            x0, y0, x1, y1 = r.box
            box = [round(float(np.clip(x0 * sx, 0, nw)), 2), round(float(np.clip(y0 * sy, 0, nh)), 2),
                   round(float(np.clip(x1 * sx, 0, nw)), 2), round(float(np.clip(y1 * sy, 0, nh)), 2)]
        rows.append([_stored_name(r.source), r.label, r.class_name, r.split, *box, r.source, nw, nh])
    duplicates = [{"source": r.source, "reason": why} for r, why in parsed.dropped]
    return rows, rejected, duplicates, parsed.classes, len(parsed.records), parsed.has_test


_WORKER: dict = {}  # a generating worker's fixed inputs (digits or fractals), set once by its initializer


def _digits_init(images, labels, pools, canvas, cfg, seed, root):
    _WORKER.update(images=images, labels=labels, pools=pools, canvas=canvas, cfg=cfg, seed=seed, root=root)


def _digits_one(job: tuple[str, int]):
    split, i = job
    d = _WORKER
    img, label, box = digits_mod.render(d["images"], d["labels"], d["pools"][split], split, i,
                                        d["canvas"], d["cfg"], d["seed"])
    source = f"{split}/{i:05d}.jpg"
    Image.fromarray(img).convert("RGB").save(d["root"] / _stored_name(source), "JPEG", quality=95)
    return [_stored_name(source), label, digits_mod.CLASSES[label], split, *box, source, d["canvas"], d["canvas"]]


def _render_digits(name: str, raw: Path, tmp: Path, params: Params, progress: bool):
    cfg = params.dataset("digits")
    images, labels = digits_mod.load_source(raw / "digits.csv.gz")
    pools = digits_mod.source_pools(labels, cfg.synth, params.seed)
    jobs = [("train", i) for i in range(cfg.synth.train)] + [("test", i) for i in range(cfg.synth.test)]
    for split in ("train", "test"):
        (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
    init = (images, labels, pools, cfg.high_res, cfg.synth, params.seed, tmp)
    rows = list(_pool_map(_digits_one, jobs, params.runtime.prepare_workers, "prepare digits", progress,
                          initializer=_digits_init, initargs=init))
    return rows, [], [], list(digits_mod.CLASSES), len(rows), True


def _fractals_init(codes, canvas, cfg, seed, root):
    _WORKER.update(codes=codes, canvas=canvas, cfg=cfg, seed=seed, root=root)


def _fractals_one(job: tuple[str, int]):
    split, i = job
    d = _WORKER
    img, label, box = fractals_mod.render(d["codes"], split, i, d["canvas"], d["cfg"], d["seed"])
    source = f"{split}/{i:05d}.jpg"
    Image.fromarray(img).convert("RGB").save(d["root"] / _stored_name(source), "JPEG", quality=95)
    return [_stored_name(source), label, fractals_mod.class_names(len(d["codes"]))[label], split, *box, source,
            d["canvas"], d["canvas"]]


def _render_fractals(name: str, raw: Path, tmp: Path, params: Params, progress: bool):
    cfg = params.dataset(name)
    f = cfg.fractal
    codes = fractals_mod.category_codes(f, params.seed)
    jobs = [("train", i) for i in range(f.classes * f.train)] + [("test", i) for i in range(f.classes * f.test)]
    for split in ("train", "test"):
        (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
    rows = list(_pool_map(_fractals_one, jobs, params.runtime.prepare_workers, f"prepare {name}", progress,
                          initializer=_fractals_init, initargs=(codes, cfg.high_res, f, params.seed, tmp)))
    return rows, [], [], fractals_mod.class_names(f.classes), len(rows), True


_RENDER = {"digits": _render_digits, "fractals": _render_fractals}  # the synthetic formats' generators


def _assign_splits(table: pd.DataFrame, name: str, params: Params, has_test: bool) -> pd.DataFrame:
    cfg, s = params.dataset(name), params.spec(name)
    official = has_test if s.user else s.official_test
    what = f"{name} ({s.name} layout)" if s.user else s.title
    if official and cfg.test_fraction > 0:
        raise PrepareError(f"datasets.{name}.test_fraction must be 0: {what} has its own test split, "
                           f"got {cfg.test_fraction}")
    if not official and cfg.test_fraction == 0:
        raise PrepareError(f"datasets.{name}.test_fraction must be > 0: {what} has no labelled test split, "
                           "so the project holds out a seeded stratified part of its training images")
    table = table.sort_values("source", kind="stable").reset_index(drop=True)
    if not official:
        test = stratified_holdout(table["label"], cfg.test_fraction, params.seed, f"{name}-test")
        table.loc[test, "split"] = "test"
    train = np.flatnonzero(table["split"] == "train")
    val = stratified_holdout(table["label"].to_numpy()[train], cfg.val_fraction, params.seed, f"{name}-val")
    table.loc[train[val], "split"] = "val"
    return table


def prepare(name: str, params: Params, raw: str | Path, out: str | Path, *, progress: bool = True) -> dict:
    """Build ``out`` (``data/prepared/<name>``) from the raw tree; return the summary."""
    raw, out = Path(raw), Path(out)
    if not raw.is_dir() and not params.spec(name).pretraining:  # a pretraining source is drawn from nothing
        raise PrepareError(f"{raw}: not found; run the download stage first (dvc repro download@{name})")
    with replacing_dir(out) as tmp:
        convert = _RENDER[params.spec(name).name] if params.spec(name).synthetic else _convert_dataset
        rows, rejected, duplicates, classes, total, has_test = convert(name, raw, tmp, params, progress)
        share = len(rejected) / max(total, 1)
        if share > params.prepare.max_rejected:
            examples = "; ".join(f"{r['source']}: {r['reason']}" for r in rejected[:3])
            raise PrepareError(f"{name}: {len(rejected)} of {total} images could not be decoded ({share:.1%} > "
                               f"prepare.max_rejected = {params.prepare.max_rejected:.1%}); e.g. {examples}")
        table = _assign_splits(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), name, params, has_test)
        table.to_csv(tmp / "manifest.csv", index=False)
        pd.DataFrame({"label": range(len(classes)), "class_name": classes}).to_csv(tmp / "classes.csv", index=False)
        pd.DataFrame(rejected + duplicates, columns=["source", "reason"]).to_csv(tmp / "rejected.csv", index=False)
    counts = table["split"].value_counts()
    return {
        "dataset": name,
        "classes": len(classes),
        "images": int(len(table)),
        **{split: int(counts.get(split, 0)) for split in ("train", "val", "test")},
        "rejected": len(rejected),
        **({"duplicates": len(duplicates)} if duplicates else {}),
    }
