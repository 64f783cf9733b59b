"""Small file helpers shared by the stages: every output is written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``out`` (``.<name>.tmp``) to build an output in; when the block ends, it
    replaces ``out``. On an error, or an interrupt, it is removed and ``out`` stays as it was; a process killed
    outright leaves only the ``.tmp`` folder, which the next build clears. So an output is whole or absent."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    The temporary name is fixed (``.<name>.tmp``): a writer killed before the rename
    leaves it behind, and the next write of the same file replaces it, so a killed
    stage never leaves a stray file in an output folder once it has run again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def file_hashes(path: str | Path, *, sha256: bool = True, md5: bool = False) -> dict[str, str]:
    """The hex digests of a file's bytes, read once: ``{"sha256": ..., "md5": ...}`` as asked."""
    algos = {name: hashlib.new(name) for name, on in (("sha256", sha256), ("md5", md5)) if on}
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            for h in algos.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in algos.items()}
