"""Safe extraction of tar and zip archives.

Every member is checked before anything is written for it: absolute paths,
``..`` components, links that point outside the destination, device files and
names listed twice are refused with an error naming the archive and the member.
Tar members go through Python's own ``data`` extraction filter (PEP 706), which
also refuses hard links leaving the destination and drops unsafe permission bits.
An archive that would unpack to more than :attr:`Limits.max_bytes`, or to more than
:attr:`Limits.max_ratio` times its own size (a zip bomb), is refused before the
member that crosses the limit is written; a zip member is never written past its
declared size. A damaged archive raises :class:`ArchiveError` naming it.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..errors import UserError


class ArchiveError(UserError, ValueError):
    """An archive that cannot be read to its end (truncated, corrupt)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would land outside the extraction folder, or the archive unpacks too much."""


@dataclass(frozen=True)
class Limits:
    """How much an archive may unpack to (``runtime.download.max_unpacked_gib`` and ``max_unpack_ratio``)."""

    max_bytes: int = 200 << 30
    max_ratio: float = 100.0          # unpacked / archive size, checked once ``ratio_after`` bytes are unpacked
    ratio_after: int = 64 << 20

    def check(self, archive: Path, size: int, member: str, unpacked: int) -> None:
        """Refuse ``member`` when the archive's (``size`` bytes) unpacked bytes, with it, cross a limit."""
        if unpacked > self.max_bytes:
            raise UnsafeArchiveError(f"{archive}: refusing member {member!r}: the archive unpacks to more than "
                                     f"{self.max_bytes:,} bytes ({self.max_bytes / 2**30:.3g} GiB, "
                                     "runtime.download.max_unpacked_gib)")
        size = max(size, 1)
        if unpacked > self.ratio_after and unpacked / size > self.max_ratio:
            raise UnsafeArchiveError(f"{archive}: refusing member {member!r}: {size:,} bytes unpack to more than "
                                     f"{unpacked:,} ({unpacked / size:.0f}x; a zip bomb? the limit is "
                                     f"{self.max_ratio:g}x, runtime.download.max_unpack_ratio)")


class _Names:
    """Refuses a second file member of the same name (it would silently replace the first)."""

    def __init__(self, archive: Path):
        self.archive, self.seen = archive, set()

    def add(self, name: str, is_dir: bool) -> None:
        key = PurePosixPath(name.replace("\\", "/")).as_posix().removeprefix("./")
        if is_dir:
            return
        if key in self.seen:
            raise UnsafeArchiveError(f"{self.archive}: refusing member {name!r}: listed twice (the second copy "
                                     "would replace the first)")
        self.seen.add(key)


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


def extract(archive: str | Path, dest: str | Path, *, progress: bool = True, limits: Limits = Limits()) -> int:
    """Extract ``archive`` (tar of any compression, or zip) into ``dest``; returns the member count.

    Raises :class:`UnsafeArchiveError` on the first member that would escape
    ``dest`` or cross ``limits``, :class:`ArchiveError` on a damaged archive; the
    caller extracts into a temporary folder and discards it then.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, dest, progress, limits)
        if _is_tar(archive):
            return _extract_tar(archive, dest, progress, limits)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc}); delete it to "
                           "download it again") from None
    raise ArchiveError(f"{archive}: not a tar or zip archive")


def _extract_tar(archive: Path, dest: Path, progress: bool, limits: Limits) -> int:
    size = archive.stat().st_size
    count = unpacked = 0
    names = _Names(archive)
    root = os.path.realpath(dest)
    # Streaming mode ("r|*") reads a .tgz once, member by member, as it is decompressed.
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"extract {archive.name}", disable=not progress, leave=False
    ) as bar:
        for member in tar:
            _check_name(archive, member.name)
            names.add(member.name, member.isdir())
            unpacked += member.size if member.isfile() else 0
            limits.check(archive, size, member.name, unpacked)
            try:
                tar.extract(member, root, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: {exc}") from None
            count += 1
            bar.update(raw.tell() - bar.n)
    return count


def _extract_zip(archive: Path, dest: Path, progress: bool, limits: Limits) -> int:
    root = os.path.realpath(dest)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names = _Names(archive)
        size, unpacked = archive.stat().st_size, 0
        for info in infos:  # every member is checked before anything is written
            _check_name(archive, info.filename)
            names.add(info.filename, info.is_dir())
            unpacked += info.file_size
            limits.check(archive, size, info.filename, unpacked)
            mode = info.external_attr >> 16
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise UnsafeArchiveError(f"{archive}: refusing member {info.filename!r}: a device or special file")
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
                written = 0
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > info.file_size:  # zipfile stops at the declared size; never trust it alone
                            raise UnsafeArchiveError(f"{archive}: refusing member {info.filename!r}: more data than "
                                                     f"its declared {info.file_size:,} bytes")
                        out.write(chunk)
                bar.update(info.file_size)
    return len(infos)
