"""``http(s)://host/path/file``: one file (or archive, unpacked by the initializer) via httpx, with timeouts and retries.

Extra request headers come from the env var ``<host>-headers`` holding a JSON object, as in
KServe (e.g. ``models.example.com-headers='{"Authorization": "Bearer ..."}'``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from isvc.storage.base import safe_join
from isvc.storage.errors import InvalidUri, StorageAuthError, StorageError, StorageNotFound, StorageUnavailable
from isvc.storage.progress import Progress
from isvc.storage.retry import with_retries
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import ModelUri

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


class _BadStatus(Exception):
    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(f"HTTP {status_code} {reason}")
        self.status_code = status_code


def fetch_http(uri: ModelUri, dest: Path, settings: StorageSettings) -> None:
    name = unquote(urlsplit(uri.url).path.rstrip("/").rsplit("/", 1)[-1])
    target = safe_join(dest, name, source=uri.raw)
    headers = _headers(uri, settings)
    try:
        with_retries(
            lambda: _get(uri, target, headers, settings),
            what=f"GET {uri.url}",
            settings=settings,
            transient=_is_transient,
        )
    except (httpx.HTTPError, _BadStatus) as exc:
        raise _translate(exc, uri, settings) from exc


def _headers(uri: ModelUri, settings: StorageSettings) -> dict[str, str]:
    host = urlsplit(uri.url).hostname or ""
    name = f"{host}-headers"
    text = settings.env.get(name)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidUri(f"env {name} is not JSON: {exc}", hint='Write it as \'{"Header-Name": "value"}\'.') from exc
    if not isinstance(value, dict):
        raise InvalidUri(f"env {name} must be a JSON object", hint='Write it as \'{"Header-Name": "value"}\'.')
    return {str(k): str(v) for k, v in value.items()}


def _get(uri: ModelUri, target: Path, headers: dict[str, str], settings: StorageSettings) -> None:
    timeout = httpx.Timeout(settings.timeout_s)
    with (
        httpx.Client(timeout=timeout, follow_redirects=True, headers=headers) as client,
        client.stream("GET", uri.url) as response,
    ):
        if response.status_code >= 400:
            raise _BadStatus(response.status_code, response.reason_phrase)
        length = response.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
        with Progress(uri.raw, total_bytes=total, total_files=1) as progress, open(target, "wb") as out:
            for chunk in response.iter_bytes(_CHUNK):
                out.write(chunk)
                progress.advance(len(chunk))
            progress.file_done(target.name)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _BadStatus):
        return exc.status_code >= 500 or exc.status_code in (408, 429)
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def _translate(exc: Exception, uri: ModelUri, settings: StorageSettings) -> StorageError:
    attempts = f"after {settings.max_attempts} attempts"
    if isinstance(exc, _BadStatus):
        if exc.status_code in (404, 410):
            return StorageNotFound(f"{uri.url} answered {exc}", hint="Check the URL; the file is not there.")
        if exc.status_code in (401, 403):
            host = urlsplit(uri.url).hostname
            return StorageAuthError(
                f"{uri.url} answered {exc}",
                hint=f"Pass credentials as headers in the env var '{host}-headers' (JSON), e.g. an Authorization header.",
            )
        if _is_transient(exc):
            return StorageUnavailable(
                f"{uri.url} answered {exc} {attempts}", hint="The server is failing; try again later."
            )
        return StorageError(f"{uri.url} answered {exc}", hint="Check the URL.")
    if isinstance(exc, httpx.TimeoutException):
        return StorageUnavailable(
            f"{uri.url} stalled: no data for {settings.timeout_s:g}s, {attempts} ({type(exc).__name__})",
            hint="Check the server and network; raise ISVC_STORAGE_TIMEOUT_S or ISVC_STORAGE_RETRIES for slow links.",
        )
    return StorageUnavailable(
        f"cannot download {uri.url} {attempts}: {type(exc).__name__}: {exc}",
        hint="Check the host name, port and network.",
    )
