"""hf:// against a local fake of the Hub's HTTP API (there is no internet here) and an offline HF cache."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from storage_helpers import FakeHub, cache_entries, model_files, with_env

from isvc.storage.errors import InvalidUri, StorageAuthError, StorageNotFound, StorageUnavailable
from isvc.storage.initializer import fetch, resolve_model_dir
from isvc.storage.settings import StorageSettings


@pytest.fixture
def hub_settings(settings: StorageSettings, hub: FakeHub, tmp_path: Path) -> StorageSettings:
    return with_env(settings, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))


def test_repo_is_fetched_with_the_token_and_cached(
    hub: FakeHub, hub_settings: StorageSettings, model_dir: Path
) -> None:
    hub.repos["tiny-org/tiny-llama"] = model_files(model_dir)
    settings = with_env(hub_settings, HF_TOKEN="hf_test_token")
    path = resolve_model_dir("hf://tiny-org/tiny-llama", settings=settings)
    assert model_files(path) == model_files(model_dir)
    assert set(hub.authorizations) == {"Bearer hf_test_token"}
    num_requests = len(hub.paths)
    assert fetch("hf://tiny-org/tiny-llama", settings=settings) == path
    assert len(hub.paths) == num_requests  # cache hit: no network work


def test_revision_is_part_of_the_key(hub: FakeHub, hub_settings: StorageSettings, model_dir: Path) -> None:
    hub.repos["o/m"] = model_files(model_dir)
    pinned = fetch(f"hf://o/m:{FakeHub.SHA}", settings=hub_settings)
    main = fetch("hf://o/m", settings=hub_settings)
    assert pinned != main and model_files(pinned) == model_files(main)
    with pytest.raises(StorageNotFound, match="revision 'v9' of 'o/m' does not exist"):
        fetch("hf://o/m:v9", settings=hub_settings)


def test_missing_repo(hub_settings: StorageSettings) -> None:
    with pytest.raises(StorageNotFound) as info:
        fetch("hf://nobody/nothing", settings=hub_settings)
    assert "'nobody/nothing' does not exist or is not visible" in str(info.value)
    assert "set HF_TOKEN" in info.value.hint
    assert cache_entries(hub_settings) == []


def test_gated_repo_asks_for_access_and_token(hub: FakeHub, hub_settings: StorageSettings) -> None:
    hub.gated.add("meta-llama/Llama-2-7b-chat-hf")
    with pytest.raises(StorageAuthError) as info:
        fetch("hf://meta-llama/Llama-2-7b-chat-hf", settings=hub_settings)
    assert "gated" in str(info.value) and "HF_TOKEN is not set" in str(info.value)
    assert "https://huggingface.co/meta-llama/Llama-2-7b-chat-hf" in info.value.hint


def test_unreachable_hub_and_not_cached_says_so(settings: StorageSettings, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    offline = with_env(settings, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf-home"))
    with pytest.raises(StorageUnavailable) as info:
        fetch("hf://HuggingFaceTB/SmolLM2-135M-Instruct", settings=offline)
    assert "cannot be reached" in str(info.value) and "not in the isvc cache" in str(info.value)
    assert "isvc storage-init hf://HuggingFaceTB/SmolLM2-135M-Instruct" in info.value.hint
    assert cache_entries(offline) == []


@pytest.mark.parametrize("offline_env", [{"HF_HUB_OFFLINE": "1"}, {}], ids=["HF_HUB_OFFLINE", "hub-down"])
def test_offline_uses_the_hf_cache(
    hub: FakeHub, hub_settings: StorageSettings, model_dir: Path, tmp_path: Path, offline_env: dict[str, str]
) -> None:
    """A model already in the machine's HF cache (e.g. from transformers) serves when the hub is out of reach."""
    from huggingface_hub import snapshot_download

    hub.repos["o/m"] = model_files(model_dir)
    snapshot_download("o/m", cache_dir=tmp_path / "hf-home" / "hub", endpoint=hub.url)  # what another tool left
    hub.close()
    offline = with_env(hub_settings, **offline_env)
    path = resolve_model_dir("hf://o/m", settings=offline)
    assert model_files(path) == model_files(model_dir)
    assert not any(p.is_symlink() for p in path.iterdir())  # real files, not links into the HF cache


def test_offline_mode_without_cache(hub_settings: StorageSettings) -> None:
    with pytest.raises(StorageUnavailable, match="HF_HUB_OFFLINE is set"):
        fetch("hf://o/m", settings=with_env(hub_settings, HF_HUB_OFFLINE="1"))


def test_hf_uri_needs_an_org() -> None:
    with pytest.raises(InvalidUri, match="hf://<org>/<model>"):
        fetch("hf://gpt2")
