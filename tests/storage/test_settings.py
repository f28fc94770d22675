from __future__ import annotations

from pathlib import Path

import pytest

from isvc.errors import ConfigError
from isvc.storage.settings import FileFilter, StorageSettings


def test_defaults_follow_the_documented_locations(tmp_path: Path) -> None:
    settings = StorageSettings.from_env({"HOME": str(tmp_path)})
    assert settings.cache_dir == Path("~/.cache/isvc").expanduser()
    assert settings.pvc_root == Path("~/.local/share/isvc/pvc").expanduser()
    assert settings.mount_root == "/mnt/models"


def test_config_file_maps_claims_relative_to_itself(tmp_path: Path) -> None:
    config = tmp_path / "isvc.yaml"
    config.write_text("pvc:\n  global-shared: /data/models\n  local: ./models\n")
    settings = StorageSettings.from_env({"ISVC_CONFIG": str(config), "ISVC_MOUNT_ROOT": "/models/"})
    assert settings.pvc_claims == {"global-shared": Path("/data/models"), "local": tmp_path / "models"}
    assert settings.mount_root == "/models"


def test_bad_config_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "isvc.yaml"
    config.write_text("pvc: [a, b]\n")
    with pytest.raises(ConfigError, match="must map claim names to folders"):
        StorageSettings.from_env({"ISVC_CONFIG": str(config)})
    with pytest.raises(ConfigError, match="does not exist"):
        StorageSettings.from_env({"ISVC_CONFIG": str(tmp_path / "missing.yaml")})


def test_patterns_accept_json_lists_and_comma_strings() -> None:
    settings = StorageSettings.from_env(
        {"STORAGE_ALLOW_PATTERNS": '["*.safetensors", "*.json"]', "STORAGE_IGNORE_PATTERNS": "*.bin, *.gguf"}
    )
    assert settings.file_filter == FileFilter(allow=("*.safetensors", "*.json"), ignore=("*.bin", "*.gguf"))
    assert settings.file_filter.accepts("sub/config.json")
    assert not settings.file_filter.accepts("pytorch_model.bin")
    assert not settings.file_filter.accepts("README.md")


def test_bad_numbers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ISVC_STORAGE_TIMEOUT_S='soon'"):
        StorageSettings.from_env({"ISVC_STORAGE_TIMEOUT_S": "soon"})


def test_kserve_storage_spec_becomes_aws_settings() -> None:
    settings = StorageSettings.from_env(
        {
            "STORAGE_CONFIG": '{"type": "s3", "endpoint_url": "http://minio:9000", "access_key_id": "a", "region": "eu"}',
            "STORAGE_OVERRIDE_CONFIG": '{"access_key_id": "b", "anonymous": "true"}',
            "AWS_ACCESS_KEY_ID": "from-env",
        }
    )
    assert settings.env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert settings.env["AWS_ACCESS_KEY_ID"] == "b"  # the override wins, as in KServe
    assert settings.env["AWS_DEFAULT_REGION"] == "eu" and settings.env["awsAnonymousCredential"] == "true"


def test_non_s3_storage_spec_is_ignored() -> None:
    assert "AWS_ENDPOINT_URL" not in StorageSettings.from_env({"STORAGE_CONFIG": '{"type": "gs"}'}).env
