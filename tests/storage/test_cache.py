from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from isvc.storage.cache import ContentCache


def test_fill_once_then_hit(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    calls: list[Path] = []

    def fill(folder: Path) -> None:
        calls.append(folder)
        (folder / "config.json").write_text("{}")

    first, cached_first = cache.get_or_fill("k", fill, label="s3://b/k")
    second, cached_second = cache.get_or_fill("k", fill, label="s3://b/k")
    assert (cached_first, cached_second) == (False, True)
    assert first == second == tmp_path / "k" / "model"
    assert len(calls) == 1 and (first / "config.json").read_text() == "{}"


def test_failed_fill_leaves_nothing(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)

    def fill(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError):
        cache.get_or_fill("k", fill, label="x")
    assert cache.lookup("k") is None
    assert not (tmp_path / "k").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_leftovers_of_a_killed_fetch_are_swept_and_never_served(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    stale = tmp_path / ".tmp" / "k.abc123" / "model"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"x")
    (tmp_path / "k").mkdir()  # an entry folder without meta.json is not complete
    assert cache.lookup("k") is None
    path, cached = cache.get_or_fill("k", lambda f: (f / "ok").write_text("1"), label="x")
    assert not cached and (path / "ok").exists()
    assert not (tmp_path / ".tmp" / "k.abc123").exists()


def test_concurrent_callers_fill_once(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    fills: list[int] = []

    def slow_fill(folder: Path) -> None:
        fills.append(1)
        time.sleep(0.3)
        (folder / "w").write_text("1")

    results: list[tuple[Path, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_fill("k", slow_fill, label="x"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fills) == 1
    assert sorted(cached for _, cached in results) == [False, True, True]
