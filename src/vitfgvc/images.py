"""The one way an image file becomes pixels: prepare, the training loader and ``vitfgvc predict`` all use it.

:func:`open_rgb` decodes one file from outside (a dataset, a user) defensively:

- the declared size is checked against a pixel limit *before* any pixel is decoded, so
  a small file that declares 20000 x 20000 pixels (a decompression bomb) is refused
  with its size and the limit, never allocated;
- asked to fit a size, a JPEG at least twice too large is decoded at a reduced DCT
  scale (``draft``) instead of in full, then resized;
- the EXIF orientation is applied once; an animated or multi-frame file gives its first
  frame; palette, gray, alpha, CMYK and 16-bit files become 8-bit RGB;
- anything that goes wrong raises :class:`ImageRejected` with the reason as text, which
  prepare writes to ``rejected.csv`` and predict reports per file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 89_478_485  # PIL's default limit (Image.MAX_IMAGE_PIXELS), about 0.25 GB of 24-bit RGB
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


class ImageRejected(Exception):
    """An image file that cannot or must not be decoded; ``str()`` is the reason."""


def target_size(w: int, h: int, high_res: int) -> tuple[int, int]:
    """The stored size (prepare, and predict on a user's image) of a ``w`` x ``h`` image: the shorter side shrunk to ``high_res``, never enlarged."""
    scale = min(1.0, high_res / min(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit (or 32-bit int) gray: scale, don't clip
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(a / 257.0, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        return Image.fromarray(((a - lo) / (hi - lo or 1.0) * 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # a palette with transparency goes through RGBA, as PIL advises
    return im.convert("RGB")


def _open(path: str | Path) -> Image.Image:
    """``Image.open`` (headers only) without PIL's own global pixel limit: :func:`_decode` applies its own."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _decode(path: str | Path, max_pixels: int, fit: int | None, trim_bottom: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PIL's notes on corrupt EXIF blocks: the pixels may be fine
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                raise ImageRejected(f"declares {w}x{h} pixels")
            if w * h > max_pixels:
                raise ImageRejected(f"{w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} (a "
                                    "decompression bomb, or raise the limit: prepare.max_pixels, vitfgvc predict "
                                    "--max-pixels)")
            kept = h - trim_bottom
            if kept < 1:
                raise ImageRejected(f"{w}x{h} px leaves nothing once the bottom {trim_bottom} px are cut")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # an animation or a multi-page file: its first frame
            orientation = im.getexif().get(0x0112, 1)
            if fit and im.format == "JPEG":
                nw, nh = target_size(w, kept, fit)
                if (nw, nh) != (w, kept):  # at a reduced DCT scale when >= 2x too big; the cut rows included
                    im.draft(None, (nw, -(-nh * h // kept)))
            im.load()
            if trim_bottom:
                dw, dh = im.size
                im = im.crop((0, 0, dw, max(1, round(dh * kept / h))))
            oriented = ImageOps.exif_transpose(im) if orientation != 1 else im
            rgb = _to_rgb(oriented if oriented is not None else im)
            size = (kept, w) if orientation in _SWAPS_AXES else (w, kept)
            if fit:
                target = target_size(*size, fit)
                if rgb.size != target:
                    rgb = rgb.resize(target, Image.BICUBIC)
            return (rgb if rgb is not im else rgb.copy()), size


def open_rgb(path: str | Path, *, max_pixels: int = MAX_PIXELS, fit: int | None = None,
             trim_bottom: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``path``: ``(RGB image, (width, height))``, or raise :class:`ImageRejected` with the reason.

    ``(width, height)`` is the image's own size (upright, after cutting ``trim_bottom``
    rows off its bottom). With ``fit`` the image is shrunk so that its shorter side is at
    most ``fit`` pixels (never enlarged; :func:`target_size`).
    """
    try:
        return _decode(path, max_pixels, fit, trim_bottom)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"refused as a decompression bomb: {exc}") from None
    except FileNotFoundError:
        raise ImageRejected("no such file") from None
    except IsADirectoryError:
        raise ImageRejected("a folder, not an image file") from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("not an image format PIL can read (JPEG, PNG, WebP, ... expected)") from None
    except MemoryError:
        raise ImageRejected("too large to decode in the memory available") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's problem, named
        raise ImageRejected(f"cannot decode: {type(exc).__name__}: {exc}") from None
