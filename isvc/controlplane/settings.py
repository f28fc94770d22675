"""Settings of the control plane's two roles, built once from argv + env and passed down."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from isvc.devices import visible_gpus

CPU_FALLBACK_ENV = "ISVC_CPU_FALLBACK"
GPUS_ENV = "ISVC_GPUS"


def detect_gpus() -> int:
    """``$ISVC_GPUS`` (a count) if set, else the GPUs this machine shows (``isvc.devices``)."""
    raw = os.environ.get(GPUS_ENV)
    if raw is not None and raw.strip():
        return int(raw)
    return visible_gpus()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class ControllerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    state_dir: Path
    """Where state.db, logs/ and pods/ live."""
    cpu_fallback: bool = False
    """Run predictors that ask for GPUs on CPU (with a CPUFallback warning condition) instead of leaving them Pending."""
    gpus: int = Field(default=0, ge=0)
    """GPUs this machine offers to predictors."""
    tick_s: float = Field(default=0.2, gt=0)
    """Longest sleep between two reconcile passes."""
    stop_grace_s: float = Field(default=10.0, ge=0)
    """SIGTERM → SIGKILL delay when stopping a predictor."""
    memory_check_s: float = Field(default=2.0, gt=0)
    """How often the RSS watchdog compares each predictor's memory with its limit."""
