"""http(s):// through a real local http.server (https differs only in the transport)."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from storage_helpers import FileServer, Route, cache_entries, model_files, with_env

from isvc.storage.errors import ArchiveError, StorageAuthError, StorageNotFound, StorageUnavailable, UnsafeArchive
from isvc.storage.initializer import fetch
from isvc.storage.settings import StorageSettings


def tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def test_tar_gz_is_fetched_unpacked_and_cached(
    http_server: FileServer, settings: StorageSettings, model_dir: Path
) -> None:
    http_server.routes["/models/tiny.tar.gz"] = Route(tar_gz(model_dir))
    uri = f"{http_server.url}/models/tiny.tar.gz"
    path = fetch(uri, settings=settings)
    assert model_files(path) == model_files(model_dir)
    assert fetch(uri, settings=settings) == path
    assert http_server.hits["/models/tiny.tar.gz"] == 1  # the second fetch did no network work


def test_zip_is_unpacked(http_server: FileServer, settings: StorageSettings, model_dir: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for rel, data in model_files(model_dir).items():
            zf.writestr(rel, data)
    http_server.routes["/tiny.zip"] = Route(buffer.getvalue())
    assert model_files(fetch(f"{http_server.url}/tiny.zip", settings=settings)) == model_files(model_dir)


def test_single_file_lands_under_its_name(http_server: FileServer, settings: StorageSettings) -> None:
    http_server.routes["/m/model.Q4.gguf"] = Route(b"GGUF-bytes")
    path = fetch(f"{http_server.url}/m/model.Q4.gguf?download=1", settings=settings)
    assert model_files(path) == {"model.Q4.gguf": b"GGUF-bytes"}


def test_host_headers_env_is_sent(http_server: FileServer, settings: StorageSettings) -> None:
    http_server.routes["/w.bin"] = Route(b"x")
    fetch(
        f"{http_server.url}/w.bin",
        settings=with_env(settings, **{"127.0.0.1-headers": '{"Authorization": "Bearer s3cret"}'}),
    )
    assert http_server.seen_headers[-1]["Authorization"] == "Bearer s3cret"


def test_zip_slip_archive_is_refused_and_not_cached(http_server: FileServer, settings: StorageSettings) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    http_server.routes["/evil.zip"] = Route(buffer.getvalue())
    with pytest.raises(UnsafeArchive, match="outside the destination"):
        fetch(f"{http_server.url}/evil.zip", settings=settings)
    assert cache_entries(settings) == []
    assert not list(settings.cache_dir.rglob("escaped.txt"))


def test_symlink_out_archive_is_refused(http_server: FileServer, settings: StorageSettings) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("weights")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)
    http_server.routes["/evil.tgz"] = Route(buffer.getvalue())
    with pytest.raises(UnsafeArchive, match="symlink 'weights' -> '/etc'"):
        fetch(f"{http_server.url}/evil.tgz", settings=settings)
    assert cache_entries(settings) == []


def test_corrupt_archive_is_refused_and_not_cached(http_server: FileServer, settings: StorageSettings) -> None:
    http_server.routes["/broken.tar.gz"] = Route(b"<html>this is an error page</html>")
    with pytest.raises(ArchiveError, match="corrupt"):
        fetch(f"{http_server.url}/broken.tar.gz", settings=settings)
    assert cache_entries(settings) == []


@pytest.mark.parametrize(
    ("status", "error"), [(404, StorageNotFound), (403, StorageAuthError), (401, StorageAuthError)]
)
def test_http_status_becomes_a_specific_error(
    http_server: FileServer, settings: StorageSettings, status: int, error: type[Exception]
) -> None:
    http_server.routes["/m.tar.gz"] = Route(b"no", status=status)
    with pytest.raises(error, match=f"HTTP {status}"):
        fetch(f"{http_server.url}/m.tar.gz", settings=settings)
    assert http_server.hits["/m.tar.gz"] == 1  # not retried
    assert cache_entries(settings) == []


def test_server_errors_are_retried_then_reported(http_server: FileServer, settings: StorageSettings) -> None:
    http_server.routes["/m.bin"] = Route(b"boom", status=503)
    with pytest.raises(StorageUnavailable, match="HTTP 503.*after 2 attempts"):
        fetch(f"{http_server.url}/m.bin", settings=settings)
    assert http_server.hits["/m.bin"] == 2


def test_stalled_download_times_out_and_the_retry_succeeds(http_server: FileServer, settings: StorageSettings) -> None:
    body = bytes(range(256)) * 64
    http_server.routes["/w.safetensors"] = Route(body, stall_first=1)
    fast = replace(settings, timeout_s=0.5, max_attempts=3)
    started = time.monotonic()
    path = fetch(f"{http_server.url}/w.safetensors", settings=fast)
    assert (path / "w.safetensors").read_bytes() == body
    assert http_server.hits["/w.safetensors"] == 2
    assert time.monotonic() - started < 10


def test_download_that_always_stalls_fails_with_a_timeout_message(
    http_server: FileServer, settings: StorageSettings
) -> None:
    http_server.routes["/w.safetensors"] = Route(b"x" * 4096, stall_first=99)
    fast = replace(settings, timeout_s=0.2, max_attempts=2)
    with pytest.raises(StorageUnavailable) as info:
        fetch(f"{http_server.url}/w.safetensors", settings=fast)
    assert "stalled: no data for 0.2s, after 2 attempts" in str(info.value)
    assert "ISVC_STORAGE_TIMEOUT_S" in info.value.hint
    assert cache_entries(settings) == []


def test_unreachable_host(settings: StorageSettings) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageUnavailable, match="cannot download"):
        fetch(f"http://127.0.0.1:{port}/m.bin", settings=settings)
