"""Check that a folder is a servable Hugging Face model, and say exactly what is wrong when it is not.

Checks run in this order, each with its own error: the folder exists and is a folder;
every file is readable by its mode bits (KServe wants 755; root ignores bits, the
predictor may not run as root); ``config.json`` is present and is JSON; weights are
present (and every shard an index names); a tokenizer is present when generating.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from isvc.storage.errors import (
    MissingConfig,
    MissingTokenizer,
    MissingWeights,
    ModelDirNotFound,
    UnreadableFiles,
)

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
WEIGHT_INDEXES: tuple[str, ...] = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),  # sentencepiece
    ("vocab.json", "merges.txt"),  # BPE (GPT-2 style)
    ("vocab.txt",),  # WordPiece
)
_MAX_LISTED = 20
_SEARCH_DEPTH = 3


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """What validation found; returned so callers can log it."""

    path: Path
    weight_files: tuple[str, ...]
    tokenizer_files: tuple[str, ...]


def validate_model_dir(path: Path, *, shown_as: str | None = None, require_tokenizer: bool = True) -> ModelFolder:
    """Raise a ModelFolderError kind unless ``path`` holds a loadable model.

    ``shown_as`` is how the user wrote the folder (``/mnt/models/llama``, ``s3://b/llama``);
    messages and suggested fixes use it instead of the local path.
    """
    shown = shown_as or str(path)
    if not path.exists():
        raise ModelDirNotFound(f"model folder {shown!r} does not exist", hint=_nearby_hint(path, shown))
    if not path.is_dir():
        raise ModelDirNotFound(
            f"model folder {shown!r} is a file, not a folder",
            hint=f"Point --model_dir at the folder that holds config.json, e.g. {_parent(shown)!r}.",
        )
    _check_readable(path, shown)
    _check_config(path, shown)
    weights = _check_weights(path, shown)
    tokenizer = _find_tokenizer(path, weights)
    if require_tokenizer and not tokenizer:
        raise MissingTokenizer(
            f"model folder {shown!r} has no tokenizer "
            "(none of tokenizer.json, tokenizer.model, vocab.json+merges.txt, vocab.txt)",
            hint="Save it next to the weights: AutoTokenizer.from_pretrained(<source>).save_pretrained(<folder>).",
        )
    return ModelFolder(path=path, weight_files=weights, tokenizer_files=tokenizer)


def _check_readable(root: Path, shown: str) -> None:
    bad: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            try:
                st = full.stat()
            except OSError:
                continue  # dangling links are reported by the checks that need the file
            wanted = stat.S_IRUSR | (stat.S_IXUSR if stat.S_ISDIR(st.st_mode) else 0)
            if _bits_for_me(st) & wanted != wanted:
                kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
                bad.append(
                    f"{full.relative_to(root)} ({kind}, mode {stat.S_IMODE(st.st_mode):03o}, owner uid {st.st_uid})"
                )
        dirnames[:] = [d for d in dirnames if _walkable(Path(dirpath, d))]
    root_mode = root.stat()
    if _bits_for_me(root_mode) & (stat.S_IRUSR | stat.S_IXUSR) != (stat.S_IRUSR | stat.S_IXUSR):
        bad.insert(0, f". (the folder itself, mode {stat.S_IMODE(root_mode.st_mode):03o})")
    if bad:
        listed = "; ".join(bad[:_MAX_LISTED]) + (
            f"; ... ({len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
        )
        raise UnreadableFiles(
            f"{len(bad)} entries in model folder {shown!r} are not readable by uid {os.getuid()}: {listed}",
            hint=f"Make the folder readable as KServe expects: chmod -R a+rX {str(root)!r} (files 644, folders 755).",
        )


def _bits_for_me(st: os.stat_result) -> int:
    """The mode bits that apply to this process, shifted to the owner position.

    Mode bits, not os.access(): tests and many hosts run as root, which os.access() waves through.
    """
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.getuid():
        return mode & 0o700
    if st.st_gid in os.getgroups() or st.st_gid == os.getgid():
        return (mode & 0o070) << 3
    return (mode & 0o007) << 6


def _walkable(folder: Path) -> bool:
    try:
        st = folder.stat()
    except OSError:
        return False
    return _bits_for_me(st) & (stat.S_IRUSR | stat.S_IXUSR) == (stat.S_IRUSR | stat.S_IXUSR)


def _check_config(root: Path, shown: str) -> None:
    config = root / "config.json"
    if not config.is_file():
        raise MissingConfig(
            f"model folder {shown!r} has no config.json; it holds: {_listing(root)}", hint=_config_hint(root, shown)
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MissingConfig(
            f"config.json in {shown!r} is not valid JSON ({exc})",
            hint="Re-save it with model.config.save_pretrained(<folder>).",
        ) from exc
    if not isinstance(data, dict):
        raise MissingConfig(
            f"config.json in {shown!r} is not a JSON object",
            hint="Re-save it with model.config.save_pretrained(<folder>).",
        )


def _config_hint(root: Path, shown: str) -> str:
    found = _find_configs(root)
    if found:
        options = ", ".join(repr(f"{shown.rstrip('/')}/{rel}") for rel in found[:5])
        return f"config.json is in a sub-folder: point --model_dir (or the storageUri) at {options}."
    return "Point at the folder that holds the model's config.json (a Hugging Face model folder), or add config.json."


def _find_configs(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if len(rel.parts) >= _SEARCH_DEPTH:
            dirnames[:] = []
        dirnames.sort()
        if rel.parts and "config.json" in filenames:
            found.append(rel.as_posix())
    return sorted(found, key=lambda r: (r.count("/"), r))


def _check_weights(root: Path, shown: str) -> tuple[str, ...]:
    for index_name in WEIGHT_INDEXES:
        index = root / index_name
        if index.is_file():
            return _check_index(root, index, shown)
    weights = tuple(sorted(p.name for p in root.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)))
    if not weights:
        raise MissingWeights(
            f"model folder {shown!r} has config.json but no weights (*.safetensors, *.bin, *.gguf); it holds: {_listing(root)}",
            hint="Copy the weight files next to config.json, or save them with model.save_pretrained(<folder>).",
        )
    empty = [w for w in weights if (root / w).stat().st_size == 0]
    if empty:
        raise MissingWeights(
            f"weight files in {shown!r} are empty: {', '.join(empty)}",
            hint="The copy or upload was cut short; fetch or copy them again.",
        )
    return weights


def _check_index(root: Path, index: Path, shown: str) -> tuple[str, ...]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = sorted({str(v) for v in weight_map.values()})
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise MissingWeights(
            f"{index.name} in {shown!r} is not a valid index ({exc})", hint="Re-save the model."
        ) from exc
    missing = [s for s in shards if not (root / s).is_file()]
    if missing:
        raise MissingWeights(
            f"{index.name} in {shown!r} names {len(shards)} shards but {len(missing)} are missing: "
            f"{', '.join(missing[:_MAX_LISTED])}",
            hint="The copy or download is incomplete; fetch the missing shards (or the whole folder) again.",
        )
    return tuple(shards)


def _find_tokenizer(root: Path, weights: tuple[str, ...]) -> tuple[str, ...]:
    for group in TOKENIZER_FILES:
        if all((root / name).is_file() for name in group):
            return group
    gguf = tuple(w for w in weights if w.endswith(".gguf"))
    return gguf  # a GGUF file embeds its tokenizer


def _listing(root: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not names:
        return "(nothing: the folder is empty)"
    return ", ".join(names[:_MAX_LISTED]) + (
        f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    )


def _parent(shown: str) -> str:
    return shown.rstrip("/").rsplit("/", 1)[0] or "/"


def _nearby_hint(path: Path, shown: str) -> str:
    import difflib

    parent = path.parent
    if not parent.is_dir():
        return f"Neither {shown!r} nor its parent exists; check the path and the storageUri."
    names = sorted(p.name for p in parent.iterdir())
    near = difflib.get_close_matches(path.name, names, n=3)
    shown_parent = _parent(shown)
    if near:
        return "Did you mean " + ", ".join(repr(f"{shown_parent}/{n}") for n in near) + "?"
    if not names:
        return f"{shown_parent!r} is empty."
    listed = ", ".join(names[:_MAX_LISTED]) + (" ..." if len(names) > _MAX_LISTED else "")
    return f"{shown_parent!r} holds: {listed}."
