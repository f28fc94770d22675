"""The seam every remote provider implements: fill an empty folder with what a URI names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol, TypeVar

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


A = TypeVar("A")
B = TypeVar("B")


def run_all(task: Callable[[A, B], None], items: Sequence[tuple[A, B]], *, max_workers: int) -> None:
    """Run ``task(*item)`` for every item on up to ``max_workers`` threads; raise the first error.

    After a failure, tasks not yet started are cancelled; running ones finish (each writes only its file).
    """
    if max_workers <= 1 or len(items) <= 1:
        for a, b in items:
            task(a, b)
        return
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="isvc-fetch") as pool:
        futures = [pool.submit(task, a, b) for a, b in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:  # in submission order, so the error reported is stable
            if future in done and (error := future.exception()) is not None:
                raise error
