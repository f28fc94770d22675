"""The storage initializer: a KServe ``storageUri`` -> a checked local model folder, fetched once.

See docs/storage.md. The public surface is re-exported here; providers (boto3,
google-cloud-storage, huggingface_hub, httpx) are imported only when their scheme is used.
"""

from __future__ import annotations

from isvc.storage.errors import StorageError
from isvc.storage.initializer import download, fetch, map_mount_path, resolve_model_dir
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import ModelUri, parse_uri
from isvc.storage.validate import validate_model_dir

__all__ = [
    "ModelUri",
    "StorageError",
    "StorageSettings",
    "download",
    "fetch",
    "map_mount_path",
    "parse_uri",
    "resolve_model_dir",
    "validate_model_dir",
]
