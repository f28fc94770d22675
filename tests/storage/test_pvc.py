from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from isvc.storage.errors import StorageNotFound
from isvc.storage.pvc import resolve_local
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import parse_uri


def test_claim_is_a_folder_under_the_pvc_root(settings: StorageSettings, model_dir: Path) -> None:
    claim = settings.pvc_root / "global-shared" / "models"
    claim.mkdir(parents=True)
    model_dir.rename(claim / "tiny")
    assert resolve_local(parse_uri("pvc://global-shared/models"), settings) == claim
    assert resolve_local(parse_uri("pvc://global-shared/models/tiny"), settings) == claim / "tiny"


def test_claim_mapped_in_config_wins(settings: StorageSettings, model_dir: Path) -> None:
    mapped = replace(settings, pvc_claims={"global-shared": model_dir.parent})
    assert resolve_local(parse_uri("pvc://global-shared/tiny-llama"), mapped) == model_dir


def test_unknown_claim_names_the_folder_and_known_claims(settings: StorageSettings) -> None:
    (settings.pvc_root / "models").mkdir(parents=True)
    with pytest.raises(StorageNotFound) as info:
        resolve_local(parse_uri("pvc://global-shared/models"), settings)
    assert str(settings.pvc_root / "global-shared") in str(info.value)
    assert "Known claims: models" in info.value.hint and "ISVC_PVC_ROOT" in info.value.hint


def test_missing_sub_path_suggests_a_near_name(settings: StorageSettings) -> None:
    (settings.pvc_root / "c" / "Llama-2-7b-chat-hf").mkdir(parents=True)
    with pytest.raises(StorageNotFound) as info:
        resolve_local(parse_uri("pvc://c/Llama-2-7b-chat"), settings)
    assert "Llama-2-7b-chat-hf" in info.value.hint


def test_plain_and_file_paths(model_dir: Path, settings: StorageSettings) -> None:
    assert resolve_local(parse_uri(str(model_dir)), settings) == model_dir
    assert resolve_local(parse_uri(f"file://{model_dir}"), settings) == model_dir
    with pytest.raises(StorageNotFound, match="does not exist"):
        resolve_local(parse_uri(f"{model_dir}-nope"), settings)
