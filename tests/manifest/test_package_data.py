"""The cluster runtime file reaches an installed isvc: a wheel holds it as a regular file, not a link."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY_FILE = REPO / "deploy" / "kserve" / "isvc-huggingfaceserver.yaml"


def test_a_wheel_of_isvc_carries_the_deploy_runtime_file(tmp_path: Path) -> None:
    # what the image build copies (deploy/image/Containerfile), so the build leaves nothing in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "deploy" / "kserve", src / "deploy" / "kserve")
    shutil.copytree(REPO / "isvc", src / "isvc", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    # no build isolation, no dependencies: setuptools from this venv, nothing from the network (~5 s)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("isvc-*.whl")
    with zipfile.ZipFile(wheel) as z:
        data = z.read("isvc/manifest/deploy/isvc-huggingfaceserver.yaml")
    assert data == DEPLOY_FILE.read_bytes()
