"""The public entry points: fetch / download / resolve_model_dir / map_mount_path."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from storage_helpers import FileServer, Route, cache_entries, model_files, with_env

from isvc.storage.errors import (
    MissingConfig,
    MissingTokenizer,
    MissingWeights,
    ModelDirNotFound,
    StorageError,
    UnreadableFiles,
    UnsupportedScheme,
)
from isvc.storage.initializer import download, fetch, map_mount_path, resolve_model_dir
from isvc.storage.settings import StorageSettings


@pytest.fixture
def shared_claim(settings: StorageSettings, model_dir: Path) -> Path:
    """pvc://global-shared/models holding Llama-2-7b-chat-hf, as in the field report."""
    models = settings.pvc_root / "global-shared" / "models"
    models.mkdir(parents=True)
    model_dir.rename(models / "Llama-2-7b-chat-hf")
    return models


@pytest.mark.parametrize(
    ("model_dir", "mount_root", "expected"),
    [
        ("/mnt/models/Llama-2-7b-chat-hf", "/mnt/models", "ROOT/Llama-2-7b-chat-hf"),
        ("/mnt/models/a/b/", "/mnt/models", "ROOT/a/b"),
        ("/mnt/models", "/mnt/models", "ROOT"),
        ("/models/x", "/models/", "ROOT/x"),
        ("/mnt/models-other/x", "/mnt/models", "/mnt/models-other/x"),
        ("/mnt/models/../etc", "/mnt/models", "/mnt/models/../etc"),
        ("/data/llama", "/mnt/models", "/data/llama"),
    ],
)
def test_map_mount_path(model_dir: str, mount_root: str, expected: str) -> None:
    root = Path("/cache/entry/model")
    assert str(map_mount_path(model_dir, root, mount_root)).replace(str(root), "ROOT") == expected


def test_map_mount_path_reads_isvc_mount_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISVC_MOUNT_ROOT", "/models")
    assert map_mount_path("/models/x", Path("/r")) == Path("/r/x")


def test_manifest_model_dir_resolves_into_the_pvc_claim(settings: StorageSettings, shared_claim: Path) -> None:
    path = resolve_model_dir(
        "/mnt/models/Llama-2-7b-chat-hf", storage_uri="pvc://global-shared/models", settings=settings
    )
    assert path == shared_claim / "Llama-2-7b-chat-hf"  # used in place, never copied
    assert cache_entries(settings) == []


def test_storage_uri_env_is_used_like_kserve_custom_containers(settings: StorageSettings, shared_claim: Path) -> None:
    env_settings = with_env(settings, STORAGE_URI="pvc://global-shared/models")
    assert (
        resolve_model_dir("/mnt/models/Llama-2-7b-chat-hf", settings=env_settings)
        == shared_claim / "Llama-2-7b-chat-hf"
    )


def test_configurable_mount_root(settings: StorageSettings, shared_claim: Path) -> None:
    custom = replace(settings, mount_root="/models")
    path = resolve_model_dir("/models/Llama-2-7b-chat-hf", storage_uri="pvc://global-shared/models", settings=custom)
    assert path == shared_claim / "Llama-2-7b-chat-hf"


def test_typo_in_model_dir_suggests_the_real_folder(settings: StorageSettings, shared_claim: Path) -> None:
    with pytest.raises(ModelDirNotFound) as info:
        resolve_model_dir("/mnt/models/Llama-2-7b-chat", storage_uri="pvc://global-shared/models", settings=settings)
    assert "Did you mean '/mnt/models/Llama-2-7b-chat-hf'" in info.value.hint


def test_model_dir_at_the_mount_root_of_a_multi_model_claim(settings: StorageSettings, shared_claim: Path) -> None:
    with pytest.raises(MissingConfig) as info:
        resolve_model_dir("/mnt/models", storage_uri="pvc://global-shared/models", settings=settings)
    assert "'/mnt/models/Llama-2-7b-chat-hf'" in info.value.hint


def test_mount_path_without_storage_uri(settings: StorageSettings) -> None:
    with pytest.raises(ModelDirNotFound, match="no storageUri is given"):
        resolve_model_dir("/mnt/models/llama", settings=settings)


def test_chmod_000_in_a_pvc_model(settings: StorageSettings, shared_claim: Path) -> None:
    weights = shared_claim / "Llama-2-7b-chat-hf" / "model.safetensors"
    os.chmod(weights, 0)
    with pytest.raises(UnreadableFiles) as info:
        resolve_model_dir("pvc://global-shared/models/Llama-2-7b-chat-hf", settings=settings)
    assert "model.safetensors (file, mode 000" in str(info.value)
    assert cache_entries(settings) == []


def test_unknown_scheme_leaves_no_cache_entry(settings: StorageSettings) -> None:
    with pytest.raises(UnsupportedScheme):
        resolve_model_dir("ftp://host/llama", settings=settings)
    assert cache_entries(settings) == []


def test_plain_local_folder(model_dir: Path, settings: StorageSettings) -> None:
    assert resolve_model_dir(str(model_dir), settings=settings) == model_dir


def test_download_links_dest_to_the_fetched_folder(
    http_server: FileServer, settings: StorageSettings, tmp_path: Path
) -> None:
    http_server.routes["/w.gguf"] = Route(b"GGUF")
    dest = tmp_path / "mnt" / "models"
    assert download(f"{http_server.url}/w.gguf", dest, settings=settings) == dest
    assert model_files(dest) == {"w.gguf": b"GGUF"} and dest.is_symlink()
    assert download(f"{http_server.url}/w.gguf", dest, settings=settings) == dest  # idempotent


def test_download_of_a_pvc_claim_is_a_link_not_a_copy(
    settings: StorageSettings, shared_claim: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()  # an empty folder is fine
    download("pvc://global-shared/models", dest, settings=settings)
    assert dest.resolve() == shared_claim.resolve()
    assert (dest / "Llama-2-7b-chat-hf" / "config.json").is_file()


def test_download_refuses_a_non_empty_destination(
    settings: StorageSettings, shared_claim: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(StorageError, match="not empty"):
        download("pvc://global-shared/models", dest, settings=settings)
    assert (dest / "keep.txt").read_text() == "mine"


def test_remote_model_missing_config_is_not_cached(http_server: FileServer, settings: StorageSettings) -> None:
    http_server.routes["/w.safetensors"] = Route(b"weights")
    with pytest.raises(MissingConfig, match="it holds: w.safetensors"):
        resolve_model_dir(f"{http_server.url}/w.safetensors", settings=settings)
    assert cache_entries(settings) == []


def test_fetch_of_a_local_path_needs_no_cache(model_dir: Path, settings: StorageSettings) -> None:
    assert fetch(f"file://{model_dir}", settings=settings) == model_dir
    assert not settings.cache_dir.exists()


@pytest.mark.parametrize(
    ("remove", "error", "needle"),
    [
        ("model.safetensors", MissingWeights, "no weights"),
        ("tokenizer.json", MissingTokenizer, "no tokenizer"),
        ("config.json", MissingConfig, "no config.json"),
    ],
)
def test_incomplete_remote_model_is_reported_and_not_cached(
    http_server: FileServer,
    settings: StorageSettings,
    model_dir: Path,
    remove: str,
    error: type[Exception],
    needle: str,
) -> None:
    import io
    import tarfile

    (model_dir / remove).unlink()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir, arcname=".")
    http_server.routes["/m.tgz"] = Route(buffer.getvalue())
    with pytest.raises(error, match=needle):
        resolve_model_dir(f"{http_server.url}/m.tgz", settings=settings)
    assert cache_entries(settings) == []


def test_replicas_racing_on_one_destination_all_succeed(
    settings: StorageSettings, shared_claim: Path, tmp_path: Path
) -> None:
    import threading

    dest = tmp_path / "models" / "rev1"
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            for _ in range(20):
                download("pvc://global-shared/models", dest, settings=settings)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert dest.resolve() == shared_claim.resolve()
    assert [p.name for p in dest.parent.iterdir()] == ["rev1"]  # no temporary links left
