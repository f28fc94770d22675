"""Images whose entrypoint isvc knows: in Kubernetes a container's ``args`` go to its image's entrypoint.

isvc pulls no image and runs commands on the host, so a container that gives ``args`` but no
``command`` can only run if isvc knows what its image would have run. KServe's
huggingfaceserver image runs ``python -m huggingfaceserver``, whose flags ``isvc serve`` takes;
isvc's own image runs ``isvc serve``.
"""

from __future__ import annotations

ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "kserve/huggingfaceserver": ("isvc", "serve"),
    # isvc's own image (deploy/image), as deploy/kserve names it before kustomize sets the registry
    "isvc": ("isvc", "serve"),
}
"""Image repository (no registry, tag or digest) -> the host command that stands for its entrypoint."""


def repository(image: str) -> str:
    """``docker.io/kserve/huggingfaceserver:v0.14.0-gpu`` -> ``kserve/huggingfaceserver``."""
    name = image.split("@", 1)[0]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        name = rest
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return name.removeprefix("library/")


def entrypoint(image: str | None) -> list[str] | None:
    """The command standing for ``image``'s entrypoint, or None if isvc does not know it."""
    found = ENTRYPOINTS.get(repository(image)) if image else None
    return list(found) if found else None
