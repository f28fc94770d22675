"""``s3://bucket/prefix`` with boto3: endpoint, region, credentials and anonymous access from the usual env vars.

Options are read from ``settings.env`` (KServe's S3 secret/annotation names included):
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` / ``S3_ENDPOINT`` (+ ``S3_USE_HTTPS``),
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` (else boto3's default chain: profile, instance role, ...),
``awsAnonymousCredential`` / ``S3_USE_ANON`` (unsigned requests), ``S3_VERIFY_SSL``,
``AWS_CA_BUNDLE``, ``S3_USER_VIRTUAL_BUCKET``, ``S3_USE_ACCELERATE``, ``S3_MAX_FILE_CONCURRENCY``
(files fetched at once, default 4).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from isvc.storage.base import run_all, safe_join
from isvc.storage.errors import StorageAuthError, StorageError, StorageNotFound, StorageUnavailable
from isvc.storage.progress import Progress
from isvc.storage.retry import with_retries
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import ModelUri

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
        "403",
    }
)
_CREDENTIALS_HINT = (
    "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for this endpoint, "
    "or awsAnonymousCredential=true (S3_USE_ANON=true) for a public bucket."
)


def fetch_s3(uri: ModelUri, dest: Path, settings: StorageSettings) -> None:
    client = make_client(settings)
    endpoint = client.meta.endpoint_url
    try:
        objects = _list(client, uri, settings)
        targets = [(key, safe_join(dest, rel, source=uri.raw)) for key, _size, rel in objects]
        with Progress(uri.raw, total_bytes=sum(size for _, size, _ in objects), total_files=len(objects)) as progress:

            def fetch_one(key: str, target: Path) -> None:
                target.parent.mkdir(parents=True, exist_ok=True)
                with_retries(
                    lambda: _download(client, uri.authority, key, target, progress),
                    what=f"s3://{uri.authority}/{key}",
                    settings=settings,
                    transient=_is_transient,
                )
                progress.file_done(key)

            run_all(fetch_one, targets, max_workers=_concurrency(settings.env))
    except StorageError:
        raise
    except Exception as exc:
        raise _translate(exc, uri, endpoint, settings) from exc


def make_client(settings: StorageSettings) -> Any:
    """A boto3 S3 client configured from ``settings.env`` and the storage timeouts."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    env = settings.env
    config = Config(
        connect_timeout=settings.timeout_s,
        read_timeout=settings.timeout_s,
        # botocore retries each API call twice; with_retries() repeats whole files on top.
        retries={"total_max_attempts": 2, "mode": "standard"},
        s3=_s3_options(env),
    )
    if _truthy(env, "awsAnonymousCredential") or _truthy(env, "S3_USE_ANON"):
        config = config.merge(Config(signature_version=UNSIGNED))
    kwargs: dict[str, Any] = {"config": config}
    if endpoint := _endpoint(env):
        kwargs["endpoint_url"] = endpoint
    if region := env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"):
        kwargs["region_name"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["aws_access_key_id"] = env["AWS_ACCESS_KEY_ID"]
        kwargs["aws_secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
        kwargs["aws_session_token"] = env.get("AWS_SESSION_TOKEN") or None
    if env.get("S3_VERIFY_SSL", "").lower() in ("0", "false"):
        kwargs["verify"] = False
    elif env.get("AWS_CA_BUNDLE"):
        kwargs["verify"] = env["AWS_CA_BUNDLE"]
    return boto3.session.Session().client("s3", **kwargs)


def _concurrency(env: Mapping[str, str]) -> int:
    text = env.get("S3_MAX_FILE_CONCURRENCY", "4")  # KServe's name
    return max(1, int(text)) if text.isdigit() else 4


def _endpoint(env: Mapping[str, str]) -> str | None:
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if url:
        return url
    legacy = env.get("S3_ENDPOINT")  # KServe's older secret: host[:port] plus S3_USE_HTTPS
    if not legacy:
        return None
    if "://" in legacy:
        return legacy
    scheme = "http" if env.get("S3_USE_HTTPS", "1").lower() in ("0", "false") else "https"
    return f"{scheme}://{legacy}"


def _s3_options(env: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if _truthy(env, "S3_USER_VIRTUAL_BUCKET"):
        options["addressing_style"] = "virtual"
    if _truthy(env, "S3_USE_ACCELERATE"):
        options["use_accelerate_endpoint"] = True
    return options


def _truthy(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes")


def _list(client: Any, uri: ModelUri, settings: StorageSettings) -> list[tuple[str, int, str]]:
    """``(key, size, relative path)`` of every object to fetch: a folder's objects, or one exact key."""
    bucket, prefix = uri.authority, uri.path
    folder = f"{prefix}/" if prefix else ""
    objects: list[tuple[str, int, str]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            rel = key[len(folder) :].lstrip("/")
            if key.endswith("/") or not rel:  # "folder" marker objects
                continue
            if settings.file_filter.accepts(rel):
                objects.append((key, int(obj["Size"]), rel))
            else:
                logger.debug("skipping %s (STORAGE_ALLOW/IGNORE_PATTERNS)", key)
    if objects:
        return objects
    if folder and _exists(client, bucket, prefix):
        return [(prefix, 0, prefix.rsplit("/", 1)[-1])]
    if settings.file_filter.allow or settings.file_filter.ignore:
        raise StorageNotFound(
            f"no object under {uri.raw!r} matches STORAGE_ALLOW_PATTERNS={list(settings.file_filter.allow)} "
            f"/ STORAGE_IGNORE_PATTERNS={list(settings.file_filter.ignore)}",
            hint="Loosen the patterns, or check the prefix.",
        )
    raise StorageNotFound(f"no objects at {uri.raw!r}", hint=_siblings_hint(client, bucket, prefix))


def _exists(client: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _siblings_hint(client: Any, bucket: str, prefix: str) -> str:
    parent = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    page = client.list_objects_v2(Bucket=bucket, Prefix=parent, Delimiter="/", MaxKeys=200)
    names = [p["Prefix"] for p in page.get("CommonPrefixes", [])] + [o["Key"] for o in page.get("Contents", [])]
    if not names:
        return f"s3://{bucket}/{parent} is empty too; check the bucket and upload the model."
    near = difflib.get_close_matches(prefix, names, n=3, cutoff=0.5)
    if near:
        return "Did you mean " + ", ".join(f"s3://{bucket}/{n.rstrip('/')}" for n in near) + "?"
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return f"s3://{bucket}/{parent} holds: {shown}."


def _download(client: Any, bucket: str, key: str, target: Path, progress: Progress) -> None:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        with open(target, "wb") as out:
            for chunk in body.iter_chunks(_CHUNK):
                out.write(chunk)
                progress.advance(len(chunk))
    finally:
        body.close()


def _is_transient(exc: BaseException) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ReadTimeoutError, ResponseStreamingError

    return isinstance(exc, BotoConnectionError | ReadTimeoutError | ResponseStreamingError)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate(exc: Exception, uri: ModelUri, endpoint: str, settings: StorageSettings) -> StorageError:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    where = f"{uri.raw!r} (endpoint {endpoint})"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageAuthError(f"no usable AWS credentials to read {where}", hint=_CREDENTIALS_HINT)
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code == "NoSuchBucket":
            return StorageNotFound(
                f"bucket {uri.authority!r} does not exist at {endpoint}",
                hint="Check the bucket name, and AWS_ENDPOINT_URL / AWS_REGION if the bucket lives elsewhere.",
            )
        if code in _AUTH_CODES:
            return StorageAuthError(f"S3 refused to let these credentials read {where}: {code}", hint=_CREDENTIALS_HINT)
        return StorageError(f"S3 error {code} while reading {where}: {exc}", hint="See the S3 error code above.")
    if _is_transient(exc):
        return StorageUnavailable(
            f"S3 endpoint {endpoint} did not answer for {uri.raw!r} after {settings.max_attempts} attempts "
            f"({type(exc).__name__}: {exc})",
            hint="Check AWS_ENDPOINT_URL and the network; raise ISVC_STORAGE_TIMEOUT_S for slow links.",
        )
    return StorageError(f"reading {where} failed: {type(exc).__name__}: {exc}")
