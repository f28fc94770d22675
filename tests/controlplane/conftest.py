"""Fixtures that run the real control plane (`isvc up`) on 127.0.0.1 and clean up every process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cp_helpers import ControlPlane
from cp_helpers import start as start_up
from cp_helpers import stop as stop_up


@pytest.fixture
def pvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "pvc"
    root.mkdir()
    monkeypatch.setenv("ISVC_PVC_ROOT", str(root))
    return root


@pytest.fixture
def start_control_plane(tmp_path: Path, pvc_root: Path) -> Iterator[Callable[..., ControlPlane]]:
    """Start `isvc up` with extra flags; every started control plane is stopped (and checked) at teardown."""
    started: list[ControlPlane] = []

    def start(*extra: str) -> ControlPlane:
        sub = tmp_path / f"cp{len(started)}"
        sub.mkdir()
        cp = start_up(sub, *extra)
        started.append(cp)
        return cp

    yield start
    for cp in started:
        stop_up(cp)


@pytest.fixture
def control_plane(start_control_plane: Callable[..., ControlPlane]) -> ControlPlane:
    return start_control_plane()
