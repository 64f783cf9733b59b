"""Extraction refuses every member that would land outside the destination."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from vitfgvc.data.extract import ArchiveError, Limits, UnsafeArchiveError, extract


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


def _outside(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_a_name_listed_twice_is_refused(tmp_path, kind):
    if kind == "tar":
        archive = _tar(tmp_path / "a.tgz", [_file("d/x.txt", b"first"), _file("d/x.txt", b"second")])
    else:
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("d/x.txt", b"first")
            zf.writestr("d/x.txt", b"second")
    with pytest.raises(UnsafeArchiveError, match=r"refusing member 'd/x.txt': listed twice"):
        extract(archive, tmp_path / "out", progress=False)


def test_device_files_are_refused(tmp_path):
    dev = tarfile.TarInfo("dev/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    with pytest.raises(UnsafeArchiveError, match=r"refusing member 'dev/null'"):
        extract(_tar(tmp_path / "a.tgz", [(dev, None)]), tmp_path / "out", progress=False)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("fifo")
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, b"")
    with pytest.raises(UnsafeArchiveError, match=r"refusing member 'fifo': a device or special file"):
        extract(archive, tmp_path / "zout", progress=False)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_a_bomb_is_refused_before_its_member_is_written(tmp_path, kind):
    zeros = b"\0" * (4 << 20)  # 4 MiB that compress to a few KiB
    limits = Limits(max_ratio=50, ratio_after=1 << 20)
    if kind == "tar":
        archive = _tar(tmp_path / "bomb.tgz", [_file("ok.txt", b"fine"), _file("zeros.bin", zeros)])
    else:
        archive = tmp_path / "bomb.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ok.txt", b"fine")
            zf.writestr("zeros.bin", zeros)
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(UnsafeArchiveError, match=r"refusing member 'zeros.bin': .* unpack to more than .*a zip bomb"):
        extract(archive, tmp_path / "out", progress=False, limits=limits)
    assert not (tmp_path / "out/zeros.bin").exists()
    with pytest.raises(UnsafeArchiveError, match=r"'zeros.bin': the archive unpacks to more than 1,048,576 bytes"):
        extract(archive, tmp_path / "out2", progress=False, limits=Limits(max_bytes=1 << 20))
    assert extract(archive, tmp_path / "out3", progress=False) == 2  # the defaults let 4 MiB through


def test_a_zip_member_longer_than_declared_is_not_written_past_its_size(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"A" * 1000)
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the central directory's uncompressed size: 1000 -> 10
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"liar.zip"):
        extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out/a.txt").exists() or (tmp_path / "out/a.txt").stat().st_size <= 10


def test_a_truncated_archive_is_named(tmp_path):
    archive = _tar(tmp_path / "a.tgz", [_file(f"f{i}.bin", bytes(range(256)) * 64) for i in range(8)])
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match=r"cut.tgz: damaged or truncated archive"):
        extract(cut, tmp_path / "out", progress=False)
