"""``hf://org/model[:revision]`` via huggingface_hub, translating hub errors and falling back to the HF cache offline.

Read from ``settings.env``: ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``; else the token saved by
``hf auth login``), ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` / ``HF_HOME``. The token is
passed explicitly on every call (KServe #6260 drops it).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from isvc.storage.errors import StorageAuthError, StorageError, StorageNotFound, StorageUnavailable
from isvc.storage.retry import with_retries
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import ModelUri

logger = logging.getLogger(__name__)


def fetch_hf(uri: ModelUri, dest: Path, settings: StorageSettings) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _truthy(settings.env.get("HF_HUB_OFFLINE") or settings.env.get("TRANSFORMERS_OFFLINE"))
    try:
        if not offline:
            try:
                with_retries(
                    lambda: _snapshot(uri, settings, local_dir=dest),
                    what=f"fetch {uri.raw}",
                    settings=settings,
                    transient=_is_transient,
                )
                shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
                return
            except LocalEntryNotFoundError as exc:  # hub unreachable: try the machine's HF cache
                logger.warning("Hugging Face Hub unreachable for %s (%s); looking in the HF cache", uri.raw, exc)
        try:
            snapshot = Path(_snapshot(uri, settings, local_files_only=True))
        except LocalEntryNotFoundError as exc:
            raise _not_cached(uri, settings, offline) from exc
        _link_or_copy_tree(snapshot, dest)
    except StorageError:
        raise
    except Exception as exc:
        raise _translate(exc, uri, settings) from exc


def hf_cache_dir(settings: StorageSettings) -> Path:
    env = settings.env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = Path(env.get("HF_HOME") or "~/.cache/huggingface").expanduser()
    return home / "hub"


def _snapshot(uri: ModelUri, settings: StorageSettings, **kwargs: Any) -> str:
    from huggingface_hub import snapshot_download

    env = settings.env
    flt = settings.file_filter
    return str(
        snapshot_download(
            repo_id=uri.repo_id,
            revision=uri.revision,
            cache_dir=hf_cache_dir(settings),
            token=env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,
            endpoint=env.get("HF_ENDPOINT") or None,
            allow_patterns=list(flt.allow) or None,
            ignore_patterns=list(flt.ignore) or None,
            etag_timeout=settings.timeout_s,
            tqdm_class=None if sys.stderr.isatty() else _quiet_tqdm(),
            **kwargs,
        )
    )


def _quiet_tqdm() -> Any:
    """huggingface_hub's files bar, switched off: without a terminal it would fill log files with \r lines."""
    from tqdm.auto import tqdm

    class QuietTqdm(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


def _link_or_copy_tree(snapshot: Path, dest: Path) -> None:
    """Copy an HF cache snapshot (symlinks into ``blobs/``) as plain files; hard-link when possible."""
    for dirpath, _dirs, files in os.walk(snapshot):
        rel = Path(dirpath).relative_to(snapshot)
        if ".cache" in rel.parts:
            continue
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            source = Path(dirpath, name).resolve()
            target = dest / rel / name
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _is_transient(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status >= 500 or status == 429
    return isinstance(exc, httpx2.TimeoutException | httpx2.NetworkError | httpx2.RemoteProtocolError)


def _not_cached(uri: ModelUri, settings: StorageSettings, offline: bool) -> StorageError:
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
    return StorageUnavailable(
        f"{why} and {uri.raw!r} is not in the isvc cache ({settings.cache_dir / 'storage'}) "
        f"nor in the HF cache ({hf_cache_dir(settings)})",
        hint=(
            f"Fetch it once with network access (`isvc storage-init {uri.raw} <dest>`), or copy the model folder to "
            "this machine and use a local path or pvc:// instead."
        ),
    )


def _translate(exc: Exception, uri: ModelUri, settings: StorageSettings) -> StorageError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"https://huggingface.co/{uri.repo_id}"
    has_token = bool(settings.env.get("HF_TOKEN") or settings.env.get("HUGGING_FACE_HUB_TOKEN"))
    if isinstance(exc, GatedRepoError):
        return StorageAuthError(
            f"{uri.raw!r} is a gated repository"
            + (" and HF_TOKEN has no access" if has_token else " and HF_TOKEN is not set"),
            hint=f"Request access on {page}, then set HF_TOKEN to a token of that account.",
        )
    if isinstance(exc, RevisionNotFoundError):
        return StorageNotFound(
            f"revision {uri.revision!r} of {uri.repo_id!r} does not exist",
            hint=f"Pick a branch, tag or commit from {page}.",
        )
    if isinstance(exc, RepositoryNotFoundError):
        private = "" if has_token else " If it is private, set HF_TOKEN."
        return StorageNotFound(
            f"Hugging Face repository {uri.repo_id!r} does not exist or is not visible",
            hint=f"Check the spelling on {page}.{private}",
        )
    if isinstance(exc, IncompleteSnapshotError):
        return StorageUnavailable(
            f"the HF cache holds only part of {uri.raw!r} and the hub cannot be reached",
            hint="Fetch it again with network access to complete it.",
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            return StorageAuthError(
                f"the hub refused {uri.raw!r} (HTTP {status})", hint="Check that HF_TOKEN is valid."
            )
    if _is_transient(exc) or isinstance(exc, HfHubHTTPError):
        return StorageUnavailable(
            f"fetching {uri.raw!r} failed after {settings.max_attempts} attempts ({type(exc).__name__}: {exc})",
            hint="Check the network and HF_ENDPOINT; raise ISVC_STORAGE_TIMEOUT_S for slow links.",
        )
    return StorageError(f"fetching {uri.raw!r} failed: {type(exc).__name__}: {exc}")
