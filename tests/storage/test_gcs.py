"""gs:// against gcp-storage-emulator on 127.0.0.1 (STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import pytest
from storage_helpers import GcsServer, cache_entries, model_files, with_env

from isvc.storage.errors import StorageNotFound
from isvc.storage.initializer import fetch, resolve_model_dir
from isvc.storage.settings import StorageSettings


@pytest.fixture
def bucket(gcs_server: GcsServer) -> str:
    name = f"models-{uuid.uuid4().hex[:8]}"
    gcs_server.client.create_bucket(name)
    return name


@pytest.fixture
def gcs_settings(settings: StorageSettings, gcs_server: GcsServer) -> StorageSettings:
    return with_env(settings, STORAGE_EMULATOR_HOST=gcs_server.host)


def test_folder_is_fetched_and_validated(
    gcs_server: GcsServer, bucket: str, gcs_settings: StorageSettings, model_dir: Path
) -> None:
    gcs_server.upload_folder(bucket, "llama/tiny", model_dir)
    path = resolve_model_dir(f"gs://{bucket}/llama/tiny", settings=gcs_settings)
    assert model_files(path) == model_files(model_dir)


def test_single_archive_blob_is_unpacked(
    gcs_server: GcsServer, bucket: str, gcs_settings: StorageSettings, model_dir: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir, arcname="tiny")
    gcs_server.client.bucket(bucket).blob("tiny.tgz").upload_from_string(buffer.getvalue())
    path = fetch(f"gs://{bucket}/tiny.tgz", settings=gcs_settings)
    assert model_files(path / "tiny") == model_files(model_dir)


def test_missing_bucket(gcs_settings: StorageSettings) -> None:
    with pytest.raises(StorageNotFound, match="bucket 'no-such-bucket' does not exist"):
        fetch("gs://no-such-bucket/llama", settings=gcs_settings)
    assert cache_entries(gcs_settings) == []


def test_missing_prefix_lists_what_is_there(
    gcs_server: GcsServer, bucket: str, gcs_settings: StorageSettings, model_dir: Path
) -> None:
    gcs_server.upload_folder(bucket, "models/Llama-2-7b-chat-hf", model_dir)
    with pytest.raises(StorageNotFound) as info:
        fetch(f"gs://{bucket}/models/llama", settings=gcs_settings)
    assert "models/Llama-2-7b-chat-hf/" in info.value.hint
    assert cache_entries(gcs_settings) == []
