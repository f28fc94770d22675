from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isvc.storage.errors import MissingConfig, MissingTokenizer, MissingWeights, ModelDirNotFound, UnreadableFiles
from isvc.storage.validate import validate_model_dir


def test_a_complete_folder_passes(model_dir: Path) -> None:
    found = validate_model_dir(model_dir)
    assert found.weight_files == ("model.safetensors",)
    assert found.tokenizer_files == ("tokenizer.json",)


def test_missing_folder_suggests_a_near_name(model_dir: Path) -> None:
    with pytest.raises(ModelDirNotFound) as info:
        validate_model_dir(model_dir.with_name("tiny-lama"), shown_as="/mnt/models/tiny-lama")
    assert "'/mnt/models/tiny-lama' does not exist" in str(info.value)
    assert "Did you mean '/mnt/models/tiny-llama'" in info.value.hint


def test_missing_config_lists_contents_and_points_at_the_subfolder(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    model_dir.rename(root / "Llama-2-7b-chat-hf")
    (root / "README.md").write_text("hi")
    with pytest.raises(MissingConfig) as info:
        validate_model_dir(root, shown_as="/mnt/models")
    assert "has no config.json; it holds: Llama-2-7b-chat-hf/, README.md" in str(info.value)
    assert "'/mnt/models/Llama-2-7b-chat-hf'" in info.value.hint


def test_invalid_config_json(model_dir: Path) -> None:
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(MissingConfig, match="not valid JSON"):
        validate_model_dir(model_dir)


def test_chmod_000_file_is_named_with_its_mode(model_dir: Path) -> None:
    os.chmod(model_dir / "model.safetensors", 0)
    with pytest.raises(UnreadableFiles) as info:
        validate_model_dir(model_dir, shown_as="pvc://models/tiny-llama")
    message = str(info.value)
    assert "model.safetensors (file, mode 000" in message
    assert "config.json" not in message.split("hint")[0]
    assert "chmod -R a+rX" in info.value.hint


def test_unreadable_subfolder_is_named(model_dir: Path) -> None:
    (model_dir / "extra").mkdir()
    os.chmod(model_dir / "extra", 0o600)
    with pytest.raises(UnreadableFiles, match=r"extra \(folder, mode 600"):
        validate_model_dir(model_dir)


def test_missing_weights_lists_what_is_there(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(MissingWeights) as info:
        validate_model_dir(model_dir)
    assert "no weights" in str(info.value) and "config.json, tokenizer.json" in str(info.value)


def test_missing_shard_named_by_the_index(model_dir: Path) -> None:
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00002.safetensors")
    with pytest.raises(MissingWeights, match="2 shards but 1 are missing: model-00002-of-00002.safetensors"):
        validate_model_dir(model_dir)


def test_empty_weights_file(model_dir: Path) -> None:
    (model_dir / "model.safetensors").write_bytes(b"")
    with pytest.raises(MissingWeights, match="empty: model.safetensors"):
        validate_model_dir(model_dir)


def test_missing_tokenizer_only_when_required(model_dir: Path) -> None:
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(MissingTokenizer, match="no tokenizer"):
        validate_model_dir(model_dir)
    assert validate_model_dir(model_dir, require_tokenizer=False).tokenizer_files == ()


def test_gguf_carries_its_own_tokenizer(tmp_path: Path) -> None:
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.Q4.gguf").write_bytes(b"GGUF....")
    assert validate_model_dir(folder).tokenizer_files == ("model.Q4.gguf",)


def test_the_hint_is_printed_once_by_every_command(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "nope"
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelDirNotFound) as info:
        validate_model_dir(missing)
    assert "hint:" not in info.value.message and str(info.value).count("hint:") == 1
    for argv in (
        ["serve", "--model_dir", str(missing), "--model_name", "x"],
        ["storage-init", f"pvc://nope/{missing.name}", str(tmp_path / "dest")],
    ):
        run = subprocess.run([sys.executable, "-m", "isvc", *argv], capture_output=True, text=True, timeout=120)
        assert run.returncode != 0 and run.stderr.count("hint:") == 1, run.stderr
