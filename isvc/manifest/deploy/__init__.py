"""The cluster runtime shipped with isvc: ``deploy/kserve/isvc-huggingfaceserver.yaml``, read as package data.

``isvc-huggingfaceserver.yaml`` in this folder is a symlink to that file, so the ClusterServingRuntime that
``kubectl apply -k deploy/kserve`` installs and the built-in runtime ``isvc up`` runs are one file; a wheel
holds a copy of it (setuptools copies what the link points at, and MANIFEST.in puts ``deploy/kserve`` in the
sdist so the link resolves there too).
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

import yaml

RUNTIME_NAME = "isvc-huggingfaceserver"
"""The ClusterServingRuntime's name; ``isvc export`` pins it as ``spec.predictor.model.runtime``."""

KSERVE_HUGGINGFACE = "kserve-huggingfaceserver"
"""KServe's own huggingface ClusterServingRuntime (priority 1), which isvc's outranks."""

MOUNT_PATH = "/mnt/models"
"""Where KServe mounts a predictor's storage; ``isvc serve``'s default ``--model_dir``."""

IMAGE_PLACEHOLDER = "isvc"
"""The image the file names; kustomization.yaml's ``images:`` replaces it with the user's registry and tag."""

_FILE = "isvc-huggingfaceserver.yaml"


@cache
def cluster_runtime_text() -> str:
    """The file as written (comments included): what ``isvc export --runtime`` prints."""
    return resources.files(__name__).joinpath(_FILE).read_text(encoding="utf-8")


@cache
def _parsed() -> dict[str, Any]:
    doc = yaml.safe_load(cluster_runtime_text())
    if not isinstance(doc, dict) or doc.get("kind") != "ClusterServingRuntime":
        raise ValueError(f"{_FILE}: expected one ClusterServingRuntime document")
    return doc


def cluster_runtime() -> dict[str, Any]:
    """The ClusterServingRuntime as a fresh dict (callers may change it)."""
    return copy.deepcopy(_parsed())
