from __future__ import annotations

import io
import logging

import pytest

from isvc.storage.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_byte_bar() -> None:
    screen = Terminal()
    with Progress("s3://b/llama", total_bytes=2048, total_files=2, stream=screen) as progress:
        progress.advance(1024)
        progress.file_done("a")
        progress.advance(1024)
        progress.file_done("b")
    assert "s3://b/llama" in screen.getvalue() and "2.00k" in screen.getvalue()


def test_without_a_terminal_it_logs_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="isvc.storage.progress")
    with Progress("gs://b/m", total_bytes=3 * 1024 * 1024, total_files=1, stream=io.StringIO()) as progress:
        progress.advance(3 * 1024 * 1024)
        progress.file_done("w")
    assert "fetch gs://b/m done: 1/1 files, 3.0/3.0 MiB" in caplog.text
