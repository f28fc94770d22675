"""The seam every remote provider implements: fill an empty folder with what a URI names."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from isvc.storage.settings import StorageSettings
from isvc.storage.uri import ModelUri


class Fetcher(Protocol):
    def __call__(self, uri: ModelUri, dest: Path, settings: StorageSettings) -> None:
        """Download ``uri`` into the existing empty folder ``dest``.

        A single object lands as ``dest/<its name>``; a prefix lands with its relative
        layout. Must honour ``settings.file_filter`` and timeouts, translate foreign errors
        into StorageError kinds, and never write outside ``dest``. Archives are unpacked by
        the caller, not here (except for http, whose response is one file by nature).
        """
        ...


def safe_join(dest: Path, rel: str, *, source: str) -> Path:
    """``dest / rel`` for an object name from a remote listing, refusing names that climb out."""
    from isvc.storage.errors import UnsafeArchive

    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeArchive(
            f"{source} names the object {rel!r}, which would be written outside the destination",
            hint="Rename the object so its key has no '..' segments.",
        )
    return dest.joinpath(*parts)
