"""The download stage: bring a dataset's original files into ``data/raw/<name>/``, extracted.

The source is, in this order of precedence: ``datasets.<name>.path`` (a local
folder with the original files or their extracted tree; nothing touches the
network), ``urls`` (HTTP(S) with checksums), or ``kaggle``. Archives are kept,
verified, in ``download.cache_dir`` so that a re-run does not fetch them again.
The output folder is built beside its final place and renamed into it only once
it is complete and parses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tqdm import tqdm

from ..config import DatasetConfig, DownloadSection
from ..errors import UserError
from ..io import file_hashes, replacing_dir
from .datasets import DatasetFormatError, Parsed, parser
from .download import Checksums, fetch, fetch_kaggle
from .extract import Limits, extract, is_archive
from .registry import DatasetSpec, FormatOptions, spec


class SourceError(UserError, RuntimeError):
    """No usable source for a dataset."""


def ways_out(s: DatasetSpec, name: str | None = None) -> str:
    name = name or s.name
    if s.user:
        return (f"Set datasets.{name}.path to the folder holding your images ({s.name} layout), or list the HTTP(S) "
                f"URL of an archive of that folder under datasets.{name}.urls (url, file, sha256).")
    files = " + ".join(s.packagings[0])
    return (
        f"Three ways to provide the {s.title} data:\n"
        f"  1. Kaggle: put kaggle.json (kaggle.com > Settings > API > Create New Token) in ~/.kaggle/ (chmod 600)\n"
        f"     or in $KAGGLE_CONFIG_DIR, or set KAGGLE_USERNAME and KAGGLE_KEY; a competition's rules must be\n"
        f"     accepted on its web page first.\n"
        f"  2. Files you already have: set datasets.{name}.path to a folder holding {files}\n"
        f"     (or their extracted tree); nothing is downloaded then.\n"
        f"  3. A mirror: list its HTTP(S) URLs under datasets.{name}.urls (url, file, sha256)."
    )


def _known_checksums(cfg: DatasetConfig) -> dict[str, Checksums]:
    known = {u.file: Checksums(u.sha256, u.md5, u.size) for u in cfg.urls}
    if cfg.kaggle and cfg.kaggle.file:
        known[cfg.kaggle.file] = Checksums(cfg.kaggle.sha256, cfg.kaggle.md5)
    return known


def limits_of(dl: DownloadSection) -> Limits:
    return Limits(max_bytes=int(dl.max_unpacked_gib * 2**30), max_ratio=dl.max_unpack_ratio)


def _unpack(files: list[Path], dest: Path, s: DatasetSpec, progress: bool, limits: Limits) -> None:
    """Extract archives into ``dest``; copy the other original files (e.g. ``.mat``) as they are."""
    for f in files:
        if is_archive(f):
            extract(f, dest, progress=progress, limits=limits)
        else:
            shutil.copy2(f, dest / f.name)
    # Mirrors sometimes wrap the original archives in one more zip: unpack those too.
    originals = {n for p in s.packagings for n in p}
    for inner in sorted(p for p in dest.rglob("*") if p.name in originals and p.is_file() and is_archive(p)):
        extract(inner, inner.parent, progress=progress, limits=limits)
        inner.unlink()


def _copy_used(parsed: Parsed, root: Path, tmp: Path) -> None:
    """A user's dataset: copy the files its parser read (images, duplicates, the CSV), nothing else."""
    paths = [r.path for r in parsed.records] + [r.path for r, _ in parsed.dropped] + list(parsed.annotations)
    for path in tqdm(paths, unit="file", desc="copy", disable=len(paths) < 1000):
        dst = tmp / path.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst)


def _no_links_out(root: Path, name: str) -> None:
    """Refuse a dataset folder holding a symlink that leads outside it (its target would be copied in)."""
    real = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            path = Path(dirpath, entry)
            if path.is_symlink() and not path.resolve().is_relative_to(real):
                raise SourceError(f"datasets.{name}.path: {path} is a link leading outside {root} (to "
                                  f"{path.resolve()}); copy the file into the folder instead")


def _from_path(s: DatasetSpec, cfg: DatasetConfig, name: str, opts: FormatOptions, tmp: Path, progress: bool,
               limits: Limits) -> tuple[str, Parsed | None]:
    """Copy or unpack the files under ``cfg.path``; also the parse of them when it was needed to check them."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        expected = f"your images in the {s.name} layout" if s.user else \
            f"{' + '.join(s.packagings[0])} or their extracted tree"
        raise SourceError(f"datasets.{name}.path: {root} is not a folder (expected one holding {expected})")
    parse = parser(s.name)
    if s.user:
        try:
            parsed = parse(root, opts)
        except DatasetFormatError as exc:
            raise SourceError(f"datasets.{name}.path: {exc}") from None
        _copy_used(parsed, root, tmp)
        return f"{len(parsed.records)} images in {root}", parsed
    known = _known_checksums(cfg)
    for packaging in s.packagings:
        files = [root / n for n in packaging]
        if all(f.is_file() for f in files):
            for f in files:
                if f.name in known:
                    known[f.name].verify(f)
            _unpack(files, tmp, s, progress, limits)
            return f"original files in {root}", None
    try:
        parsed = parse(root, opts)
    except DatasetFormatError as exc:
        raise SourceError(f"datasets.{name}.path: {root} holds neither {' + '.join(s.packagings[0])} "
                          f"nor their extracted tree ({exc})") from None
    _no_links_out(root, name)
    shutil.copytree(root, tmp, dirs_exist_ok=True)
    return f"extracted tree in {root}", parsed


def _from_http(s: DatasetSpec, cfg: DatasetConfig, name: str, dl: DownloadSection, tmp: Path, progress: bool) -> str:
    cache = Path(dl.cache_dir) / name
    files = []
    for u in cfg.urls:
        checks = Checksums(u.sha256, u.md5, u.size)
        path = fetch(u.url, cache / u.file, checksums=checks, retries=dl.retries, backoff=dl.backoff,
                     timeout=dl.timeout, chunk_size=dl.chunk_mib << 20, progress=progress)
        if checks.sha256 is None and checks.md5 is None:
            tqdm.write(f"{u.file}: no checksum in params; sha256 {file_hashes(path)['sha256']} "
                       f"(add it under datasets.{name}.urls to pin the file)")
        files.append(path)
    _unpack(files, tmp, s, progress, limits_of(dl))
    return ", ".join(u.url for u in cfg.urls)


def _from_kaggle(s: DatasetSpec, cfg: DatasetConfig, name: str, dl: DownloadSection, tmp: Path, progress: bool) -> str:
    k = cfg.kaggle
    file = k.file or f"{(k.competition or k.dataset or '').split('/')[-1]}.zip"
    path = fetch_kaggle(dl.kaggle_api, Path(dl.cache_dir) / name / file, competition=k.competition,
                        dataset=k.dataset, checksums=Checksums(k.sha256, k.md5), ways_out=ways_out(s, name),
                        retries=dl.retries, backoff=dl.backoff, timeout=dl.timeout,
                        chunk_size=dl.chunk_mib << 20, progress=progress)
    _unpack([path], tmp, s, progress, limits_of(dl))
    return f"kaggle {'competition ' + k.competition if k.competition else 'dataset ' + k.dataset}"


def _from_package(s: DatasetSpec, cfg: DatasetConfig, tmp: Path) -> str:
    """``digits``: scikit-learn ships the file; a ``path`` may hold another copy of it."""
    if cfg.path:
        src = Path(cfg.path).expanduser() / "digits.csv.gz"
    else:
        import sklearn.datasets

        src = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    if not src.is_file():
        raise SourceError(f"digits: {src} not found (expected scikit-learn's bundled digits.csv.gz)")
    shutil.copy2(src, tmp / "digits.csv.gz")
    return str(src)


def acquire(name: str, cfg: DatasetConfig, dl: DownloadSection, out: str | Path, *, progress: bool = True) -> dict:
    """Fill ``out`` with the dataset's original files, extracted; return a short summary."""
    s = spec(cfg.format or name)
    opts = FormatOptions.of(s.name, cfg.options)
    parsed = None  # the parse of the files, where a source already made it
    with replacing_dir(out) as tmp:  # interrupted or failed: nothing half-built is left behind
        if s.synthetic:
            origin = _from_package(s, cfg, tmp)
        elif cfg.path:
            origin, parsed = _from_path(s, cfg, name, opts, tmp, progress, limits_of(dl))
        elif cfg.urls:
            origin = _from_http(s, cfg, name, dl, tmp, progress)
        elif cfg.kaggle:
            origin = _from_kaggle(s, cfg, name, dl, tmp, progress)
        else:
            raise SourceError(f"datasets.{name}: no source set (path, urls or kaggle).\n{ways_out(s, name)}")
        parse = parser(s.name)  # None for the synthetic digits: nothing to parse
        if parsed is None and parse is not None:
            parsed = parse(tmp, opts)  # what was fetched or unpacked is the dataset's format
        images = len(parsed.records) if parsed else None
    return {"dataset": name, "origin": origin, "labelled_images": images}
