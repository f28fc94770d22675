from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from isvc.storage.archive import is_archive, unpack
from isvc.storage.errors import ArchiveError, UnsafeArchive


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def test_tar_gz_unpacks_with_its_layout(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "m.tar.gz", [("config.json", b"{}"), ("sub/w.safetensors", b"x"), symlink("ln", "config.json")]
    )
    dest = tmp_path / "out"
    dest.mkdir()
    unpack(archive, dest, shown_as="m.tar.gz")
    assert (dest / "config.json").read_bytes() == b"{}"
    assert (dest / "sub" / "w.safetensors").read_bytes() == b"x"
    assert (dest / "ln").resolve() == (dest / "config.json").resolve()


def test_zip_unpacks(tmp_path: Path) -> None:
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model/config.json", "{}")
    dest = tmp_path / "out"
    dest.mkdir()
    unpack(archive, dest, shown_as="m.zip")
    assert (dest / "model" / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("member", "needle"),
    [
        (("../evil.txt", b"x"), "outside the destination"),
        (("a/../../evil.txt", b"x"), "outside the destination"),
        (("/etc/evil.txt", b"x"), "absolute path"),
        (symlink("escape", "../../etc"), "points outside"),
        (symlink("abs", "/etc/passwd"), "points outside"),
    ],
)
def test_tar_that_writes_outside_is_refused_before_writing(tmp_path: Path, member: object, needle: str) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", [member])  # type: ignore[list-item]
    dest = tmp_path / "deep" / "out"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeArchive, match=needle):
        unpack(archive, dest, shown_as="bad.tar.gz")
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_zip_slip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.txt", "x")
    dest = tmp_path / "a" / "out"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeArchive, match="'../../evil.txt'"):
        unpack(archive, dest, shown_as="bad.zip")
    assert not list(tmp_path.rglob("evil.txt"))


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("ln")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchive, match="symlink 'ln'"):
        unpack(archive, dest, shown_as="link.zip")


@pytest.mark.parametrize("name", ["broken.tar.gz", "broken.zip", "broken.tar"])
def test_corrupt_archive_is_an_archive_error(tmp_path: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"\x1f\x8b\x08 this is not really an archive" * 10)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="corrupt") as info:
        unpack(archive, dest, shown_as=name)
    assert not isinstance(info.value, UnsafeArchive)


def test_truncated_tar_gz_is_corrupt(tmp_path: Path) -> None:
    whole = make_tar(tmp_path / "whole.tar.gz", [("w.bin", bytes(range(256)) * 400)]).read_bytes()
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(whole[: len(whole) // 2])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="corrupt"):
        unpack(archive, dest, shown_as="cut.tar.gz")


def test_archive_names() -> None:
    assert all(is_archive(n) for n in ["a.tar", "a.tar.gz", "a.TGZ", "a.zip"])
    assert not any(is_archive(n) for n in ["model.safetensors", "config.json", "a.gz"])
