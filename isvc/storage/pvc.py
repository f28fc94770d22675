"""``pvc://claim/sub/path``, ``file://`` and plain paths: resolved to a local folder, never copied."""

from __future__ import annotations

import difflib
from pathlib import Path

from isvc.storage.errors import StorageNotFound
from isvc.storage.settings import StorageSettings
from isvc.storage.uri import ModelUri


def resolve_local(uri: ModelUri, settings: StorageSettings) -> Path:
    """The existing local folder (or file) ``uri`` names; isvc only ever reads it."""
    if uri.scheme == "pvc":
        return _resolve_pvc(uri, settings)
    path = Path(uri.path).absolute()
    if not path.exists():
        raise StorageNotFound(f"local path {str(path)!r} (from {uri.raw!r}) does not exist", hint=_nearby(path))
    return path


def claim_folder(claim: str, settings: StorageSettings) -> Path:
    """The folder backing a claim: the config file's mapping, else ``<pvc_root>/<claim>``."""
    return settings.pvc_claims.get(claim) or settings.pvc_root / claim


def _resolve_pvc(uri: ModelUri, settings: StorageSettings) -> Path:
    root = claim_folder(uri.authority, settings)
    if not root.is_dir():
        known = sorted(set(settings.pvc_claims) | _subfolders(settings.pvc_root))
        listing = f" Known claims: {', '.join(known)}." if known else ""
        raise StorageNotFound(
            f"PVC claim {uri.authority!r} (from {uri.raw!r}) has no folder: {str(root)!r} does not exist",
            hint=(
                f"Create {str(root)!r} with the model inside, or map the claim in the isvc config file "
                f"('pvc: {{{uri.authority}: /path/to/folder}}'), or set ISVC_PVC_ROOT.{listing}"
            ),
        )
    path = root / uri.path if uri.path else root
    if not path.exists():
        raise StorageNotFound(f"{uri.raw!r} resolves to {str(path)!r}, which does not exist", hint=_nearby(path))
    return path


def _subfolders(folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir() if p.is_dir()}
    except OSError:
        return set()


def _nearby(path: Path) -> str:
    missing = path  # the first component that does not exist
    while not missing.parent.is_dir() and missing.parent != missing.parent.parent:
        missing = missing.parent
    parent = missing.parent
    try:
        names = sorted(p.name for p in parent.iterdir())
    except OSError:
        return f"Check the path; {str(parent)!r} cannot be listed."
    near = difflib.get_close_matches(missing.name, names, n=3)
    if near:
        return f"Did you mean {', '.join(repr(str(parent / n)) for n in near)}?"
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return f"{str(parent)!r} holds: {shown or '(nothing)'}."
