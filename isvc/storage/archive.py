"""Unpack ``.tar``/``.tar.gz``/``.tgz``/``.zip`` safely: no member may land outside the destination."""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from isvc.storage.errors import ArchiveError, UnsafeArchive

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")

_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def unpack(archive: Path, dest: Path, *, shown_as: str) -> None:
    """Extract ``archive`` into the existing folder ``dest``; ``shown_as`` names it in errors.

    Raises UnsafeArchive before writing a member that is absolute, climbs out with ``..``,
    links outside ``dest`` or is a device; ArchiveError when the file is not a readable
    archive. A failure may leave some members in ``dest``: callers unpack into a temporary
    folder they delete on error.
    """
    logger.info("unpacking %s", shown_as)
    try:
        if archive.name.lower().endswith(".zip"):
            _unpack_zip(archive, dest, shown_as)
        else:
            _unpack_tar(archive, dest, shown_as)
    except tarfile.FilterError as exc:  # the stdlib "data" filter caught what our checks did not
        raise UnsafeArchive(f"archive {shown_as} is unsafe: {exc}", hint=_UNSAFE_HINT) from exc
    except _CORRUPT as exc:
        raise ArchiveError(
            f"archive {shown_as} is corrupt or not a {_kind(archive.name)} archive ({type(exc).__name__}: {exc})",
            hint="Re-create it (e.g. `tar czf model.tar.gz -C folder .`) and upload it again; check the upload finished.",
        ) from exc


_UNSAFE_HINT = "Re-create the archive from inside the model folder (`tar czf model.tar.gz -C folder .`) with no links."


def _kind(name: str) -> str:
    return "zip" if name.lower().endswith(".zip") else "tar"


def _unpack_tar(archive: Path, dest: Path, shown_as: str) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        for member in tar:
            _check_member(member.name, shown_as)
            if member.issym() or member.islnk():
                _check_link(member, shown_as)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchive(
                    f"archive {shown_as} holds {member.name!r}, which is a device or pipe, not a file",
                    hint=_UNSAFE_HINT,
                )
            tar.extract(member, dest, filter="data")


def _unpack_zip(archive: Path, dest: Path, shown_as: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member(info.filename, shown_as)
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile would write the link target as a file's text; refuse rather than break the model.
                raise UnsafeArchive(
                    f"archive {shown_as} holds the symlink {info.filename!r}; isvc does not create links from zip files",
                    hint="Store the file itself in the zip, or use a tar archive.",
                )
            zf.extract(info, dest)


def _check_member(name: str, shown_as: str) -> None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"archive {shown_as} holds {name!r}, an absolute path", hint=_UNSAFE_HINT)
    normal = posixpath.normpath(name.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise UnsafeArchive(
            f"archive {shown_as} holds {name!r}, which would be written outside the destination", hint=_UNSAFE_HINT
        )


def _check_link(member: tarfile.TarInfo, shown_as: str) -> None:
    target = member.linkname
    if member.issym():
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), target))
    else:  # hard links name a path relative to the archive root
        resolved = posixpath.normpath(target)
    if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
        kind = "symlink" if member.issym() else "hard link"
        raise UnsafeArchive(
            f"archive {shown_as} holds the {kind} {member.name!r} -> {target!r}, which points outside the destination",
            hint=_UNSAFE_HINT,
        )
