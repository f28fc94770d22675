"""Progress of one fetch in bytes and files: a tqdm bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import IO, Any

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


class Progress:
    """Counts bytes and files; call :meth:`advance` per chunk and :meth:`file_done` per file.

    Thread-safe: parallel file downloads report into one instance.
    """

    def __init__(
        self,
        label: str,
        *,
        total_bytes: int | None = None,
        total_files: int | None = None,
        stream: IO[str] | None = None,
        log_every_s: float = 5.0,
    ) -> None:
        self.label = label
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.num_bytes = 0
        self.num_files = 0
        self._log_every_s = log_every_s
        self._started = time.monotonic()
        self._last_log = self._started
        self._lock = threading.Lock()
        out = sys.stderr if stream is None else stream
        self._bar: Any = None
        if out.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=out)

    def advance(self, num_bytes: int) -> None:
        with self._lock:
            self.num_bytes += num_bytes
            if self._bar is not None:
                self._bar.update(num_bytes)
                return
            now = time.monotonic()
            due = now - self._last_log >= self._log_every_s
            if due:
                self._last_log = now
        if due:
            self._log("progress")

    def file_done(self, name: str) -> None:
        with self._lock:
            self.num_files += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.num_files}/{self.total_files or '?'} files", refresh=False)
        else:
            logger.debug("fetched %s (%s)", name, self.label)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._log("done")

    def _log(self, event: str) -> None:
        elapsed_s = time.monotonic() - self._started
        total = f"/{self.total_bytes / _MIB:.1f}" if self.total_bytes else ""
        logger.info(
            "fetch %s %s: %d%s files, %.1f%s MiB in %.1fs",
            self.label,
            event,
            self.num_files,
            f"/{self.total_files}" if self.total_files else "",
            self.num_bytes / _MIB,
            total,
            elapsed_s,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()
            self._bar = None
