"""``gs://bucket/prefix`` with google-cloud-storage; ``STORAGE_EMULATOR_HOST`` points it at an emulator.

Credentials come from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud,
metadata server); without any, public buckets are read anonymously, as KServe does.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from isvc.storage.base import safe_join
from isvc.storage.errors import StorageAuthError, StorageError, StorageNotFound, StorageUnavailable
from isvc.storage.progress import Progress
from isvc.storage.retry import with_retries
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import ModelUri

logger = logging.getLogger(__name__)


def fetch_gcs(uri: ModelUri, dest: Path, settings: StorageSettings) -> None:
    client = make_client(settings)
    try:
        blobs = _list(client, uri, settings)
        with Progress(uri.raw, total_bytes=sum(b.size or 0 for b, _ in blobs), total_files=len(blobs)) as progress:
            for blob, rel in blobs:
                target = safe_join(dest, rel, source=uri.raw)
                target.parent.mkdir(parents=True, exist_ok=True)
                with_retries(
                    functools.partial(blob.download_to_filename, str(target), timeout=settings.timeout_s, retry=None),
                    what=f"gs://{uri.authority}/{blob.name}",
                    settings=settings,
                    transient=_is_transient,
                )
                progress.advance(target.stat().st_size)
                progress.file_done(rel)
    except StorageError:
        raise
    except Exception as exc:
        raise _translate(exc, uri, settings) from exc


def make_client(settings: StorageSettings) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    emulator = settings.env.get("STORAGE_EMULATOR_HOST")
    if emulator:
        endpoint = emulator if "://" in emulator else f"http://{emulator}"
        return storage.Client(
            project=settings.env.get("GOOGLE_CLOUD_PROJECT") or "isvc",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    try:
        return storage.Client()
    except DefaultCredentialsError:
        logger.info("no Google credentials found; reading GCS anonymously (public buckets only)")
        return storage.Client.create_anonymous_client()


def _list(client: Any, uri: ModelUri, settings: StorageSettings) -> list[tuple[Any, str]]:
    from google.api_core.exceptions import NotFound

    bucket = client.bucket(uri.authority)
    prefix = uri.path
    folder = f"{prefix}/" if prefix else ""
    try:
        listed = list(client.list_blobs(bucket, prefix=folder, timeout=settings.timeout_s, retry=None))
    except NotFound as exc:
        raise _no_bucket(uri) from exc
    blobs: list[tuple[Any, str]] = []
    for blob in listed:
        rel = blob.name[len(folder) :].lstrip("/")
        if blob.name.endswith("/") or not rel:
            continue
        if settings.file_filter.accepts(rel):
            blobs.append((blob, rel))
    if blobs:
        return blobs
    if prefix:
        single = bucket.get_blob(prefix, timeout=settings.timeout_s, retry=None)
        if single is not None:
            return [(single, prefix.rsplit("/", 1)[-1])]
    if not bucket.exists(timeout=settings.timeout_s, retry=None):
        raise _no_bucket(uri)
    filtered = " matching STORAGE_ALLOW_PATTERNS/STORAGE_IGNORE_PATTERNS" if settings.file_filter.fingerprint() else ""
    raise StorageNotFound(f"no objects{filtered} at {uri.raw!r}", hint=_siblings_hint(client, uri))


def _no_bucket(uri: ModelUri) -> StorageNotFound:
    return StorageNotFound(
        f"bucket {uri.authority!r} does not exist",
        hint="Check the bucket name (and STORAGE_EMULATOR_HOST if you use one).",
    )


def _siblings_hint(client: Any, uri: ModelUri) -> str:
    parent = uri.path.rsplit("/", 1)[0] + "/" if "/" in uri.path else ""
    iterator = client.list_blobs(uri.authority, prefix=parent, delimiter="/", max_results=200, retry=None)
    names = [b.name for b in iterator]
    names += sorted(iterator.prefixes)
    if not names:
        return f"gs://{uri.authority}/{parent} is empty too; upload the model first."
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return f"gs://{uri.authority}/{parent} holds: {shown}."


def _is_transient(exc: BaseException) -> bool:
    import requests
    from google.api_core import exceptions as gexc

    return isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | gexc.ServiceUnavailable
        | gexc.InternalServerError
        | gexc.TooManyRequests
        | gexc.GatewayTimeout,
    )


def _translate(exc: Exception, uri: ModelUri, settings: StorageSettings) -> StorageError:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, gexc.NotFound):
        return StorageNotFound(f"{uri.raw!r} does not exist: {exc.message}", hint="Check the bucket and object names.")
    if isinstance(exc, gexc.Forbidden | gexc.Unauthorized | auth_exc.GoogleAuthError):
        return StorageAuthError(
            f"GCS refused to let these credentials read {uri.raw!r}: {exc}",
            hint="Set GOOGLE_APPLICATION_CREDENTIALS to a service-account key with storage.objects.get/list on the bucket.",
        )
    if _is_transient(exc):
        return StorageUnavailable(
            f"GCS did not answer for {uri.raw!r} after {settings.max_attempts} attempts ({type(exc).__name__}: {exc})",
            hint="Check the network (or STORAGE_EMULATOR_HOST); raise ISVC_STORAGE_TIMEOUT_S for slow links.",
        )
    return StorageError(f"reading {uri.raw!r} failed: {type(exc).__name__}: {exc}")
