"""GPUs this process can see, without importing torch (a leaf: the control plane and the server both ask).

``CUDA_VISIBLE_DEVICES`` when set (as the kubelet's device plugin and users set it), else the
devices the NVIDIA driver lists under ``/proc/driver/nvidia/gpus``.
"""

from __future__ import annotations

import os
from pathlib import Path

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def visible_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(list(NVIDIA_GPUS.iterdir()))
    except OSError:
        return 0
