"""Safe extraction of tar and zip archives.

Every member is checked before anything is written for it: absolute paths,
``..`` components and links that point outside the destination are refused with
an error naming the archive and the member. Tar members go through Python's own
``data`` extraction filter (PEP 706), which also drops device files and unsafe
permission bits.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..errors import UserError


class UnsafeArchiveError(UserError, ValueError):
    """An archive member would land outside the extraction folder."""


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or _is_tar(path)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _check_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: absolute path")
    if ".." in pure.parts:
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: '..' would leave the destination")


def extract(archive: str | Path, dest: str | Path, *, progress: bool = True) -> int:
    """Extract ``archive`` (tar of any compression, or zip) into ``dest``; returns the member count.

    Raises :class:`UnsafeArchiveError` on the first member that would escape
    ``dest``; the caller extracts into a temporary folder and discards it then.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, dest, progress)
    if _is_tar(archive):
        return _extract_tar(archive, dest, progress)
    raise ValueError(f"{archive}: not a tar or zip archive")


def _extract_tar(archive: Path, dest: Path, progress: bool) -> int:
    size = archive.stat().st_size
    count = 0
    root = os.path.realpath(dest)
    # Streaming mode ("r|*") reads a .tgz once, member by member, as it is decompressed.
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"extract {archive.name}", disable=not progress, leave=False
    ) as bar:
        for member in tar:
            _check_name(archive, member.name)
            try:
                tar.extract(member, root, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: {exc}") from None
            count += 1
            bar.update(raw.tell() - bar.n)
    return count


def _extract_zip(archive: Path, dest: Path, progress: bool) -> int:
    root = os.path.realpath(dest)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                where = os.path.realpath(os.path.join(root, os.path.dirname(info.filename), target))
                if os.path.commonpath([root, where]) != root or os.path.isabs(target):
                    raise UnsafeArchiveError(f"{archive}: refusing member {info.filename!r}: link to {target!r} "
                                             "points outside the destination")
        total = sum(i.file_size for i in infos)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"extract {archive.name}",
                  disable=not progress, leave=False) as bar:
            for info in infos:
                target = Path(root, *PurePosixPath(info.filename).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                bar.update(info.file_size)
    return len(infos)
