"""Where isvc keeps files it makes for itself (prepared models, built kernels, bench venvs).

A leaf module: every layer may import it, and it imports nothing of isvc.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$ISVC_CACHE_DIR`` or ``~/.cache/isvc``."""
    return Path(os.environ.get("ISVC_CACHE_DIR") or Path.home() / ".cache" / "isvc")
