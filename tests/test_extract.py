"""Extraction refuses every member that would land outside the destination."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from vitfgvc.data.extract import UnsafeArchiveError, extract


def _tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"payload"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, *, hard=False):
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def test_regular_tar_and_inner_link_extract(tmp_path):
    archive = _tar(tmp_path / "ok.tgz", [_file("top/a.txt"), _link("top/b.txt", "a.txt")])
    assert extract(archive, tmp_path / "out", progress=False) == 2
    assert (tmp_path / "out/top/b.txt").read_bytes() == b"payload"


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
@pytest.mark.parametrize(
    "member, reason",
    [
        (_file("/etc/evil"), "absolute path"),
        (_file("a/../../evil"), "'..'"),
        (_link("a/link", "../../../etc/passwd"), "outside the destination"),
        (_link("a/link", "/etc/passwd"), "absolute path"),
        (_link("a/hard", "/etc/passwd", hard=True), "absolute path"),
    ],
)
def test_tar_traversal_is_refused(tmp_path, mode, member, reason):
    archive = _tar(tmp_path / "evil.tar", [_file("fine.txt"), member], mode)
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(UnsafeArchiveError) as err:
        extract(archive, dest, progress=False)
    assert "evil.tar" in str(err.value) and member[0].name in str(err.value) and reason in str(err.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "dest" / "evil").exists()


def test_symlink_then_write_through_it_is_refused(tmp_path):
    # a link to a folder outside, then a file "through" the link
    archive = _tar(tmp_path / "evil.tgz", [_link("sub", ".."), _file("sub/escaped.txt")])
    with pytest.raises(UnsafeArchiveError):
        extract(archive, tmp_path / "dest", progress=False)
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:/evil.txt"])
def test_zip_traversal_is_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(name, "bad")
    with pytest.raises(UnsafeArchiveError) as err:
        extract(archive, tmp_path / "dest", progress=False)
    assert name in str(err.value)
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_pointing_out_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../../etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        extract(archive, tmp_path / "dest", progress=False)


def test_zip_extracts_nested_members(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/Train_0.jpg", b"x")
        zf.writestr("train.csv", "image_id\n")
    assert extract(archive, tmp_path / "out", progress=False) == 2
    assert (tmp_path / "out/images/Train_0.jpg").read_bytes() == b"x"


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.tgz"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="not a tar or zip"):
        extract(path, tmp_path / "out", progress=False)
