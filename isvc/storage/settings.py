"""Where storage lives on this machine and how patient fetches are, read once from env and config file.

Environment (all optional):

- ``ISVC_CACHE_DIR``: cache root, default ``~/.cache/isvc``; fetched models go to ``<root>/storage``.
- ``ISVC_PVC_ROOT``: folder whose sub-folders are claims, default ``~/.local/share/isvc/pvc``.
- ``ISVC_CONFIG``: config file, default ``~/.config/isvc/config.yaml``; its ``pvc:`` mapping
  names claims explicitly (``pvc: {global-shared: /data/models}``) and wins over the root.
- ``ISVC_MOUNT_ROOT``: where manifests expect the storageUri mounted, default ``/mnt/models``.
- ``ISVC_STORAGE_TIMEOUT_S`` (read/connect timeout, 30), ``ISVC_STORAGE_RETRIES`` (attempts, 4),
  ``ISVC_STORAGE_BACKOFF_S`` (first retry delay, doubled each time, 1.0).
- ``STORAGE_ALLOW_PATTERNS`` / ``STORAGE_IGNORE_PATTERNS``: KServe's file filters, a JSON list
  or a comma-separated string of glob patterns.
- ``STORAGE_CONFIG`` / ``STORAGE_OVERRIDE_CONFIG``: KServe's storage-spec JSON; for ``"type": "s3"``
  its keys become the AWS variables below (without writing ``os.environ``).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from isvc.errors import ConfigError

DEFAULT_MOUNT_ROOT = "/mnt/models"


@dataclass(frozen=True, slots=True)
class FileFilter:
    """KServe's ``STORAGE_ALLOW_PATTERNS`` / ``STORAGE_IGNORE_PATTERNS`` as glob lists."""

    allow: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def accepts(self, rel_path: str) -> bool:
        """Whether a file at ``rel_path`` (``/``-separated, relative to the fetched root) is kept."""
        name = rel_path.rsplit("/", 1)[-1]

        def hit(patterns: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatch(rel_path, p) or fnmatch.fnmatch(name, p) for p in patterns)

        return (not self.allow or hit(self.allow)) and not hit(self.ignore)

    def fingerprint(self) -> str:
        """Part of the cache key: a filtered fetch is a different content."""
        return json.dumps([list(self.allow), list(self.ignore)]) if self.allow or self.ignore else ""


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Everything the storage initializer reads from the machine; built once by :meth:`from_env`."""

    cache_dir: Path
    """Root of the content cache (``<cache_dir>/storage/<key>``)."""
    pvc_root: Path
    """Claims without an explicit mapping are ``<pvc_root>/<claim>``."""
    pvc_claims: Mapping[str, Path] = field(default_factory=dict)
    """Explicit claim -> folder map from the config file."""
    mount_root: str = DEFAULT_MOUNT_ROOT
    """Where a manifest's ``--model_dir`` expects the storageUri (KServe hard-codes /mnt/models)."""
    timeout_s: float = 30.0
    """Connect and per-read timeout of one network call; a stalled transfer fails after this."""
    max_attempts: int = 4
    """Tries per file before a transient failure becomes an error."""
    backoff_s: float = 1.0
    """Delay before the first retry; doubled for each next one."""
    file_filter: FileFilter = FileFilter()
    """Which files of a remote folder to fetch."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The environment the providers read their SDK options from (AWS_*, S3_*, HF_TOKEN, ...)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageSettings:
        env = dict(os.environ if environ is None else environ)
        env.update(_storage_spec_env(env))
        cache_dir = Path(env.get("ISVC_CACHE_DIR") or "~/.cache/isvc").expanduser()
        pvc_root = Path(env.get("ISVC_PVC_ROOT") or "~/.local/share/isvc/pvc").expanduser()
        config_path = Path(env.get("ISVC_CONFIG") or "~/.config/isvc/config.yaml").expanduser()
        return cls(
            cache_dir=cache_dir,
            pvc_root=pvc_root,
            pvc_claims=_read_pvc_claims(config_path, explicit=bool(env.get("ISVC_CONFIG"))),
            mount_root=(env.get("ISVC_MOUNT_ROOT") or DEFAULT_MOUNT_ROOT).rstrip("/") or "/",
            timeout_s=_number(env, "ISVC_STORAGE_TIMEOUT_S", 30.0, minimum=0.01),
            max_attempts=int(_number(env, "ISVC_STORAGE_RETRIES", 4, minimum=1)),
            backoff_s=_number(env, "ISVC_STORAGE_BACKOFF_S", 1.0, minimum=0.0),
            file_filter=FileFilter(
                allow=_patterns(env, "STORAGE_ALLOW_PATTERNS"), ignore=_patterns(env, "STORAGE_IGNORE_PATTERNS")
            ),
            env=env,
        )


# KServe storage-spec key -> the variable the S3 provider reads.
_S3_SPEC_KEYS: dict[str, str] = {
    "endpoint_url": "AWS_ENDPOINT_URL",
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "region": "AWS_DEFAULT_REGION",
    "ca_bundle": "AWS_CA_BUNDLE",
    "verify_ssl": "S3_VERIFY_SSL",
    "anonymous": "awsAnonymousCredential",
}


def _storage_spec_env(env: Mapping[str, str]) -> dict[str, str]:
    spec: dict[str, object] = {}
    for name in ("STORAGE_CONFIG", "STORAGE_OVERRIDE_CONFIG"):
        text = env.get(name)
        if not text:
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name} is not JSON ({exc}); it holds KServe's storage spec.", param=name) from exc
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a JSON object (KServe's storage spec).", param=name)
        spec.update(value)
    if spec.get("type") != "s3":
        return {}
    return {var: str(spec[key]) for key, var in _S3_SPEC_KEYS.items() if key in spec}


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number; set it to e.g. {default}.", param=name) from None
    if value < minimum:
        raise ConfigError(f"{name}={text!r} is below {minimum}; set it to e.g. {default}.", param=name)
    return value


def _patterns(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    text = (env.get(name) or "").strip()
    if not text:
        return ()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{name}={text!r} is not a JSON list ({exc}); write e.g. '[\"*.json\"]'.", param=name
            ) from exc
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{name}={text!r} must be a JSON list of strings.", param=name)
    else:
        items = text.split(",")
    return tuple(i.strip() for i in items if i.strip())


def _read_pvc_claims(path: Path, *, explicit: bool) -> dict[str, Path]:
    if not path.is_file():
        if explicit:
            raise ConfigError(
                f"ISVC_CONFIG={str(path)!r} does not exist; create it or unset ISVC_CONFIG.", param="ISVC_CONFIG"
            )
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read isvc config {str(path)!r}: {exc}") from exc
    claims = data.get("pvc", {}) if isinstance(data, dict) else None
    if not isinstance(claims, dict) or not all(isinstance(v, str) for v in claims.values()):
        raise ConfigError(
            f"'pvc' in {str(path)!r} must map claim names to folders, e.g. 'pvc: {{global-shared: /data/models}}'.",
            param="pvc",
        )
    base = path.parent
    return {str(k): (base / Path(v).expanduser()).resolve() for k, v in claims.items()}
