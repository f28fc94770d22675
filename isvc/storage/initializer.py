"""Storage URI -> local folder: scheme dispatch, cache, archive unpacking, mount-path mapping, validation.

Public entry points (everything else in ``isvc.storage`` is an implementation detail):

- :func:`fetch`: the local folder holding a URI's content (pvc/local in place, remote via the cache).
- :func:`download`: KServe's storage-initializer contract, ``dest`` afterwards shows the content.
- :func:`resolve_model_dir`: what ``isvc serve --model_dir`` calls; URI, mount path or folder in,
  validated model folder out.
- :func:`map_mount_path`: ``/mnt/models/<sub>`` -> ``<storage root>/<sub>``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from isvc.storage.archive import is_archive, unpack
from isvc.storage.base import Fetcher
from isvc.storage.cache import ContentCache
from isvc.storage.errors import ModelDirNotFound, StorageError
from isvc.storage.pvc import resolve_local
from isvc.storage.settings import DEFAULT_MOUNT_ROOT, StorageSettings
from isvc.storage.uri import ModelUri, parse_uri
from isvc.storage.validate import validate_model_dir

logger = logging.getLogger(__name__)

# scheme -> "module:function"; imported on first use so boto3 & co load only when needed.
_FETCHERS: dict[str, str] = {
    "s3": "isvc.storage.s3:fetch_s3",
    "gs": "isvc.storage.gcs:fetch_gcs",
    "hf": "isvc.storage.hf:fetch_hf",
    "http": "isvc.storage.http:fetch_http",
    "https": "isvc.storage.http:fetch_http",
}


def fetch(
    uri: str | ModelUri,
    *,
    settings: StorageSettings | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Return the local path holding ``uri``'s content, fetching it into the cache if needed.

    pvc://, file:// and plain paths resolve in place (never copied; isvc only reads them).
    Remote URIs land in ``<cache>/storage/<key>/model`` once; later calls (from any process)
    do no network work. A single fetched archive is unpacked. ``check`` runs on the content
    before a new cache entry is committed, so content that fails it is not kept.
    """
    settings = settings or StorageSettings.from_env()
    parsed = parse_uri(uri) if isinstance(uri, str) else uri
    started = time.monotonic()
    if not parsed.is_remote:
        path = resolve_local(parsed, settings)
        if check is not None:
            check(path)
        return path

    fetcher = _fetcher(parsed.scheme)

    def fill(content: Path) -> None:
        fetcher(parsed, content, settings)
        _unpack_single_archive(content, parsed)
        if check is not None:
            check(content)

    cache = ContentCache(settings.cache_dir / "storage")
    path, cached = cache.get_or_fill(parsed.cache_key(settings.file_filter.fingerprint()), fill, label=parsed.raw)
    if cached and check is not None:
        check(path)
    logger.info(
        "%s ready at %s (%s, %.2fs)", parsed.raw, path, "cached" if cached else "fetched", time.monotonic() - started
    )
    return path


def download(uri: str, dest: str | Path, *, settings: StorageSettings | None = None) -> Path:
    """KServe's storage initializer: afterwards ``dest`` shows ``uri``'s content; returns ``dest``.

    ``dest`` becomes a symlink to the fetched (cached) or local folder, so nothing is copied
    twice. It must not exist, be an empty folder, or be a link from an earlier call.
    """
    source = fetch(uri, settings=settings)
    target = Path(dest).expanduser().absolute()
    if source.is_file():  # a local single file: show it inside dest, as KServe does
        target.mkdir(parents=True, exist_ok=True)
        _replace_with_link(target / source.name, source)
    else:
        _replace_with_link(target, source)
    return target


def resolve_model_dir(
    model_dir_or_uri: str | Path,
    *,
    storage_uri: str | None = None,
    require_tokenizer: bool = True,
    settings: StorageSettings | None = None,
) -> Path:
    """The validated local model folder for ``isvc serve --model_dir``.

    Accepts a storage URI (fetched, validated before it is cached), a path under the mount
    root (``/mnt/models/<sub>``: fetched from ``storage_uri``, else env ``STORAGE_URI``, then
    mapped with :func:`map_mount_path`), or a plain local folder. Raises a StorageError kind.
    """
    settings = settings or StorageSettings.from_env()
    text = str(model_dir_or_uri)

    def check(folder: Path, shown: str = text) -> None:
        validate_model_dir(folder, shown_as=shown, require_tokenizer=require_tokenizer)

    parsed = parse_uri(text)
    if parsed.scheme != "file" or text.startswith("file://"):
        return fetch(parsed, settings=settings, check=check)
    if _under(text, settings.mount_root):
        source = storage_uri or settings.env.get("STORAGE_URI")
        if source:
            # Validate after caching: the storageUri may hold many models, and a typo in
            # --model_dir must not throw the whole download away.
            root = fetch(source, settings=settings)
            path = map_mount_path(text, root, settings.mount_root)
            check(path)
            return path
        if not Path(text).exists():
            raise ModelDirNotFound(
                f"--model_dir {text!r} is under the mount root {settings.mount_root!r} but no storageUri is given",
                hint="Set the manifest's storageUri (or env STORAGE_URI), e.g. pvc://models, or pass a local folder.",
            )
    path = Path(text).expanduser().absolute()
    check(path)
    return path


def map_mount_path(model_dir: str, storage_root: Path, mount_root: str | None = None) -> Path:
    """Map a manifest's ``--model_dir`` under the mount root onto the fetched folder.

    ``map_mount_path("/mnt/models/Llama-2-7b-chat-hf", root)`` is ``root / "Llama-2-7b-chat-hf"``;
    the mount root itself maps to ``root``. Paths outside the mount root are returned unchanged.
    ``mount_root`` defaults to env ``ISVC_MOUNT_ROOT``, else ``/mnt/models``.
    """
    mount = _mount_root(mount_root)
    normal = posixpath.normpath(model_dir)
    if normal == mount:
        return storage_root
    if _under(normal, mount):
        return storage_root.joinpath(*normal[len(mount) :].strip("/").split("/"))
    return Path(model_dir)


def _mount_root(mount_root: str | None) -> str:
    text = mount_root or os.environ.get("ISVC_MOUNT_ROOT") or DEFAULT_MOUNT_ROOT
    return posixpath.normpath(text)


def _under(path: str, mount_root: str) -> bool:
    normal, mount = posixpath.normpath(path), posixpath.normpath(mount_root)
    return normal == mount or normal.startswith(mount.rstrip("/") + "/")


def _fetcher(scheme: str) -> Fetcher:
    module_name, _, func_name = _FETCHERS[scheme].partition(":")
    fetcher: Fetcher = getattr(importlib.import_module(module_name), func_name)
    return fetcher


def _unpack_single_archive(content: Path, uri: ModelUri) -> None:
    """KServe's rule: a fetch that yields exactly one archive file yields its contents instead."""
    entries = list(content.iterdir())
    if len(entries) != 1 or not entries[0].is_file() or not is_archive(entries[0].name):
        return
    archive = content.parent / f"archive-{entries[0].name}"  # out of the way of its own members
    entries[0].rename(archive)
    try:
        unpack(archive, content, shown_as=uri.raw)
    finally:
        archive.unlink()


def _replace_with_link(link: Path, source: Path) -> None:
    """Make ``link`` a symlink to ``source``, atomically; safe when replicas race on the same ``link``."""
    try:
        st = os.lstat(link)  # one look, so a link another replica just made is not mistaken for a folder
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        if link.resolve() == source.resolve():
            return
    elif st is not None and stat.S_ISDIR(st.st_mode):
        if any(link.iterdir()):
            raise StorageError(
                f"destination {str(link)!r} is a folder that is not empty",
                hint="Pass a new or empty folder; isvc links it to the fetched model instead of copying.",
            )
        with contextlib.suppress(FileNotFoundError):
            link.rmdir()
    elif st is not None:
        raise StorageError(f"destination {str(link)!r} exists and is a file", hint="Pass a new or empty folder.")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.isvc-link-{os.getpid()}-{threading.get_ident()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(source, target_is_directory=source.is_dir())
    os.replace(tmp, link)
