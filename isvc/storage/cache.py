"""The content cache: one folder per storage URI (+revision, +filters), filled once under a file lock.

Layout under ``<ISVC_CACHE_DIR>/storage``::

    <key>/meta.json, <key>/model/...    complete entries (appear by one atomic rename)
    .tmp/<key>.<random>/                fetches in progress, or left by a killed process
    .locks/<key>.lock                   one flock per key: two predictors fetch once

An entry folder exists only once its fetch (and the caller's check) succeeded, so an
interrupted download never looks complete; its leftovers in ``.tmp`` are swept by the
next fetch of the same key.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

CONTENT_DIR = "model"
META_FILE = "meta.json"


class ContentCache:
    """The entries under one root; every method is safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Path | None:
        """The content folder of a complete entry, or None."""
        entry = self.entry(key)
        return entry / CONTENT_DIR if (entry / META_FILE).is_file() else None

    def get_or_fill(self, key: str, fill: Callable[[Path], None], *, label: str) -> tuple[Path, bool]:
        """Return ``(content folder, was_cached)``; on a miss run ``fill(empty folder)`` first.

        Only one process fills a key at a time; the others wait on the lock and then find
        the entry complete. If ``fill`` raises, nothing is left behind and the error propagates.
        """
        found = self.lookup(key)
        if found is not None:
            return found, True
        with self._lock(key, label):
            found = self.lookup(key)
            if found is not None:  # another process filled it while we waited
                return found, True
            self._sweep(key)
            return self._fill(key, fill, label), False

    def _fill(self, key: str, fill: Callable[[Path], None], label: str) -> Path:
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=tmp_root))
        started = time.monotonic()
        try:
            content = tmp / CONTENT_DIR
            content.mkdir()
            fill(content)
            num_files, num_bytes = _count(content)
            meta = {
                "uri": label,
                "fetched_at": time.time(),
                "num_files": num_files,
                "num_bytes": num_bytes,
                "elapsed_s": round(time.monotonic() - started, 3),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(tmp, self.entry(key))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.entry(key) / CONTENT_DIR

    def _sweep(self, key: str) -> None:
        """Remove what a killed fetch of ``key`` left; safe because we hold ``key``'s lock."""
        entry = self.entry(key)
        if entry.exists():  # a folder without meta.json is not ours to trust
            logger.warning("removing incomplete cache entry %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
        tmp_root = self.root / ".tmp"
        if tmp_root.is_dir():
            for stale in tmp_root.glob(f"{key}.*"):
                logger.info("removing leftovers of an interrupted fetch: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)

    @contextmanager
    def _lock(self, key: str, label: str) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{key}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process that is fetching %s", label)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _count(folder: Path) -> tuple[int, int]:
    num_files = num_bytes = 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            num_files += 1
            num_bytes += os.lstat(os.path.join(dirpath, name)).st_size
    return num_files, num_bytes
