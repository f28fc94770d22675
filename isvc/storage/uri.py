"""Parse a KServe ``storageUri`` (or a plain local path) into a :class:`ModelUri`; pure string logic."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from isvc.storage.errors import InvalidUri, UnsupportedScheme

SCHEMES: tuple[str, ...] = ("pvc", "file", "hf", "s3", "gs", "http", "https")
REMOTE_SCHEMES: frozenset[str] = frozenset({"hf", "s3", "gs", "http", "https"})

# Schemes people write for the same stores; named in the error so the fix is one edit.
_ALIASES: dict[str, str] = {"gcs": "gs", "s3a": "s3", "s3n": "s3", "huggingface": "hf", "hdfs": "", "webhdfs": ""}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ModelUri:
    """One parsed storage location.

    ``authority`` is the bucket (s3, gs), the claim (pvc), the organisation (hf) or the
    host (http); it is empty for local paths. ``path`` is the key prefix, sub-path, model
    name or URL path, without leading or trailing ``/`` (local paths keep theirs).
    """

    raw: str
    scheme: str
    authority: str
    path: str
    revision: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.scheme in REMOTE_SCHEMES

    @property
    def repo_id(self) -> str:
        """``org/model`` for ``hf://`` URIs."""
        return f"{self.authority}/{self.path}"

    @property
    def url(self) -> str:
        """The URL to GET for ``http(s)://`` URIs (query string kept)."""
        return self.raw

    def canonical(self) -> str:
        """A normalised spelling: equal for URIs that name the same content."""
        if self.scheme == "file":
            return f"file://{self.path}"
        if self.scheme in ("http", "https"):
            return self.raw
        text = f"{self.scheme}://{self.authority}/{self.path}".rstrip("/")
        return f"{text}:{self.revision}" if self.revision else text

    def cache_key(self, extra: str = "") -> str:
        """A file-name-safe key: a readable slug plus a hash of the canonical URI and ``extra``."""
        digest = hashlib.sha256(f"{self.canonical()}\n{extra}".encode()).hexdigest()[:16]
        tail = (self.path or self.authority).rstrip("/").rsplit("/", 1)[-1]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.scheme}-{self.authority}-{tail}")[:80].strip("-.")
        return f"{slug}-{digest}"

    def __str__(self) -> str:
        return self.raw


def parse_uri(raw: str) -> ModelUri:
    """Parse ``raw``; a string without ``scheme://`` is a local path."""
    text = raw.strip()
    if not text:
        raise InvalidUri(
            "storageUri is empty", hint="Write e.g. pvc://models/llama, s3://bucket/prefix or hf://org/model."
        )
    match = _SCHEME_RE.match(text)
    if match is None:
        return ModelUri(raw=text, scheme="file", authority="", path=os.path.expanduser(text))
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        raise UnsupportedScheme(
            f"storageUri {text!r} uses the unsupported scheme '{scheme}://'", hint=_scheme_hint(scheme)
        )
    if scheme == "file":
        if not rest:
            raise InvalidUri(f"storageUri {text!r} names no path", hint="Write file:///absolute/path/to/model.")
        return ModelUri(raw=text, scheme="file", authority="", path=os.path.expanduser(rest))
    if scheme in ("http", "https"):
        return _parse_http(text, scheme)
    if scheme == "hf":
        return _parse_hf(text, rest)
    authority, _, path = rest.partition("/")
    what = "claim" if scheme == "pvc" else "bucket"
    if not authority:
        raise InvalidUri(f"storageUri {text!r} names no {what}", hint=f"Write {scheme}://<{what}>/<path>.")
    path = path.strip("/")
    if scheme == "pvc" and ".." in path.split("/"):
        raise InvalidUri(
            f"storageUri {text!r} climbs out of its claim with '..'", hint="Name a folder inside the claim."
        )
    return ModelUri(raw=text, scheme=scheme, authority=authority, path=path)


def _parse_hf(text: str, rest: str) -> ModelUri:
    repo, _, revision = rest.partition(":")
    parts = repo.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise InvalidUri(
            f"storageUri {text!r} is not hf://<org>/<model>[:<revision>]",
            hint="Name the repository with its organisation, e.g. hf://HuggingFaceTB/SmolLM2-135M-Instruct.",
        )
    if ":" in rest and not revision:
        raise InvalidUri(
            f"storageUri {text!r} has an empty revision after ':'", hint="Drop the ':' or name a branch, tag or commit."
        )
    return ModelUri(raw=text, scheme="hf", authority=parts[0], path=parts[1], revision=revision or None)


def _parse_http(text: str, scheme: str) -> ModelUri:
    parts = urlsplit(text)
    if not parts.hostname:
        raise InvalidUri(f"storageUri {text!r} names no host", hint=f"Write {scheme}://host/path/model.tar.gz.")
    name = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise InvalidUri(
            f"storageUri {text!r} names no file",
            hint="Point at one file or archive (.tar, .tar.gz, .tgz, .zip), not a folder.",
        )
    return ModelUri(raw=text, scheme=scheme, authority=parts.netloc, path=parts.path.strip("/"))


def _scheme_hint(scheme: str) -> str:
    supported = ", ".join(f"{s}://" for s in SCHEMES)
    if _ALIASES.get(scheme):
        return f"Use {_ALIASES[scheme]}:// instead. Supported: {supported}."
    if scheme in _ALIASES:
        return f"isvc does not read {scheme}://; copy the model to a supported store or a local folder. Supported: {supported}."
    near = difflib.get_close_matches(scheme, SCHEMES, n=1)
    if near:
        return f"Did you mean {near[0]}://? Supported: {supported}."
    return f"Copy the model to a supported store or a local folder. Supported: {supported}."
