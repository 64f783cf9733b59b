"""Decoding untrusted images: one function for prepare, the loader and predict; a hostile corpus never crashes it."""

from __future__ import annotations

import collections
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitfgvc.config import Params
from vitfgvc.data.acquire import acquire
from vitfgvc.data.prepare import _Task, convert_image, prepare
from vitfgvc.images import MAX_PIXELS, ImageRejected, open_rgb

from .conftest import smoke_params
from .fixtures.corpus import huge_jpeg, huge_png, valid_images, write_corpus

PER_FILE_SECONDS = 20  # a file that takes longer is a hang


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    files = {}
    for name, data in valid_images().items():
        (root / name).write_bytes(data)
        files[name.rsplit(".", 1)[0]] = root / name
    return files


def test_every_mode_becomes_rgb_of_the_right_size(valid):
    for kind, path in valid.items():
        img, size = open_rgb(path)
        assert img.mode == "RGB", kind
        assert img.size == size == ((40, 30) if "animated" in kind or "pages" in kind else
                                    (48, 64) if kind == "jpeg_exif_rotated" else (64, 48)), kind
    gray16 = np.asarray(open_rgb(valid["png_16bit"])[0])[..., 0].astype(int)
    gray8 = np.asarray(open_rgb(valid["png_la"])[0])[..., 0].astype(int)
    assert np.abs(gray16 - gray8).max() <= 1  # 16-bit scaled to 8, not clipped to white


def test_exif_orientation_is_applied_once(valid):
    upright, _ = open_rgb(valid["jpeg_exif_rotated"])
    stored = Image.open(valid["jpeg_exif_rotated"]).convert("RGB")
    assert stored.size == (64, 48) and upright.size == (48, 64)
    # the bright square at the stored top-left is at the top-right once turned 90 degrees clockwise
    assert np.asarray(stored)[4, 4].mean() > 230 and np.asarray(upright)[4, 48 - 5].mean() > 230


def test_an_animation_gives_its_first_frame(valid):
    first = Image.open(valid["gif_animated"]).convert("RGB")
    assert np.array_equal(np.asarray(open_rgb(valid["gif_animated"])[0]), np.asarray(first))


def test_a_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_png(20_000, 20_000))
    with pytest.raises(ImageRejected, match=r"20000x20000 = 400,000,000 pixels, more than the limit of 89,478,485"):
        open_rgb(bomb)
    assert bomb.stat().st_size < 200
    small = tmp_path / "small.png"
    small.write_bytes(valid_images()["png_rgb.png"])  # 64 x 48 = 3,072 pixels
    with pytest.raises(ImageRejected, match=r"64x48 = 3,072 pixels, more than the limit of 1,000"):
        open_rgb(small, max_pixels=1_000)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), (40, 90, 200)).save(path, quality=80)
    asked = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: asked.append(size) or draft(self, mode, size))
    img, size = open_rgb(path, fit=448)
    assert size == (2000, 1500) and img.size == (597, 448) and asked == [(597, 448)]
    trimmed, size = open_rgb(path, fit=448, trim_bottom=20)
    assert size == (2000, 1480) and trimmed.size == (605, 448)


def test_a_jpeg_declaring_a_huge_frame_is_refused(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(huge_jpeg(valid_images()["jpeg_rgb.jpg"], 65_000, 65_000))
    with pytest.raises(ImageRejected, match=r"65000x65000 = 4,225,000,000 pixels"):
        open_rgb(path)


def _timed_convert(task: _Task):
    start = time.perf_counter()
    result = convert_image(task)
    return result, time.perf_counter() - start


def test_a_hostile_corpus_is_processed_or_reported_file_by_file(tmp_path):
    """500 seeded files (every mode, bit flips, truncations, bombs, wrong extensions, bad CRCs): the decoder
    returns an image or a reason for each, within a time limit, and writes nothing for a rejected file;
    prepare then lists every file in its manifest or in rejected.csv."""
    samples = write_corpus(tmp_path / "corpus", 500)
    out = tmp_path / "out"
    out.mkdir()
    tasks = [_Task(str(s.path), str(out / f"{i:04d}.jpg"), 64, 90) for i, s in enumerate(samples)]
    counts, slowest = collections.Counter(), (0.0, "")
    with mp.get_context("fork").Pool(2) as pool:
        pending = [(s, pool.apply_async(_timed_convert, (t,))) for s, t in zip(samples, tasks)]
        for (s, job), task in zip(pending, tasks):
            result, seconds = job.get(timeout=PER_FILE_SECONDS)  # a TimeoutError here is a hang, named by the test
            slowest = max(slowest, (seconds, s.path.name))
            wrote = Path(task.dst).exists()
            if isinstance(result, str):
                counts["rejected"] += 1
                assert result and not wrote, (s.kind, result)
            else:
                counts["processed"] += 1
                assert wrote and Image.open(task.dst).size == result[1], s.kind
            if s.kind.startswith("valid:"):
                assert not isinstance(result, str), (s.kind, result)
            if s.kind.startswith(("huge_", "zero_bytes", "not_an_image")):
                assert isinstance(result, str), s.kind
    print(f"\nhostile corpus: {len(samples)} files, {counts['processed']} processed, {counts['rejected']} rejected, "
          f"0 crashes, slowest {slowest[1]} ({slowest[0] * 1000:.0f} ms)")
    assert counts["processed"] + counts["rejected"] == len(samples) >= 500
    assert counts["processed"] >= 17 and counts["rejected"] >= 100

    # prepare, through an imagefolder dataset of the corpus: each file ends in the manifest or in rejected.csv
    root = tmp_path / "dataset"
    files = [s.path for s in samples if s.path.suffix in (".jpg", ".png", ".webp", ".tif")]
    for i, path in enumerate(files):
        dst = root / ("a" if i % 2 else "b") / path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(path.read_bytes())
    data = smoke_params(**{"datasets.mydata.path": str(root), "datasets.mydata.test_fraction": 0.2,
                           "prepare.max_rejected": 1.0})
    params = Params.model_validate(data)
    acquire("mydata", params.dataset("mydata"), params.runtime.download, tmp_path / "raw", progress=False)
    summary = prepare("mydata", params, tmp_path / "raw", tmp_path / "prepared", progress=False)
    manifest = pd.read_csv(tmp_path / "prepared/manifest.csv")
    rejected = pd.read_csv(tmp_path / "prepared/rejected.csv")
    listed = sorted(manifest["source"].tolist() + rejected["source"].tolist())
    assert listed == sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    stored = sorted(p.relative_to(tmp_path / "prepared").as_posix() for p in (tmp_path / "prepared/images").rglob("*")
                    if p.is_file())
    assert stored == sorted(manifest["image"])  # nothing written for a rejected file
    assert summary["rejected"] > 100 and summary["images"] > 40


def test_the_default_limit_is_pils():
    assert MAX_PIXELS == 89_478_485 == Params.model_validate(smoke_params()).prepare.max_pixels
