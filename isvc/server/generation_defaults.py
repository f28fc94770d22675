"""Default sampling values from a model's ``generation_config.json`` (vLLM's ``--generation-config``).

For the OpenAI routes (KServe's V1/V2 generate take their parameters as sent). As in vLLM: with ``auto`` (the default) the model folder's file supplies ``temperature``, ``top_p``,
``top_k``, ``min_p`` and ``repetition_penalty`` for requests that leave them out, and its
``max_new_tokens`` caps every request's output (the server-wide limit that spares a server the
request with no ``max_tokens`` rambling to the end of the context); ``vllm`` ignores the file; a
folder path reads that folder's file instead. ``--override-generation-config`` (a JSON object)
is merged over whichever was read. A request's own values always win.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isvc.engine.params import SamplingParams
from isvc.errors import ConfigError, IsvcError

logger = logging.getLogger(__name__)

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
"""The generation-config values a request inherits when it leaves them out (vLLM's list)."""


@dataclass(frozen=True)
class GenerationDefaults:
    sampling: dict[str, float] = field(default_factory=dict)
    """Values for SAMPLING_KEYS, where the config had them."""
    max_new_tokens: int | None = None
    """Every request's output tokens at most this many; None: up to the context."""

    def cap(self, max_tokens: int) -> int:
        """A request's max_tokens (already checked against the context) under the server-wide cap."""
        return max_tokens if self.max_new_tokens is None else min(max_tokens, self.max_new_tokens)

    def pick(self, request: Any, name: str, fallback: Any) -> Any:
        """The request's ``name`` if it set it, else this default, else its own (or ``fallback`` for None)."""
        value = getattr(request, name, None)
        if name in request.model_fields_set and value is not None:
            return value
        if name in self.sampling:
            return self.sampling[name]
        return fallback if value is None else value


def load_generation_defaults(
    source: str, model_dir: Path, override: dict[str, Any] | None = None
) -> GenerationDefaults:
    """``--generation-config`` (auto | vllm | a folder) and ``--override-generation-config`` -> the defaults."""
    values: dict[str, Any] = {}
    if source == "auto":
        values = _read(model_dir / "generation_config.json", required=False)
    elif source != "vllm":
        folder = Path(source)
        if not folder.is_dir():
            raise ConfigError(f"--generation-config {source}: not a folder (auto, vllm, or a folder path)")
        values = _read(folder / "generation_config.json", required=True)
    values = {**values, **(override or {})}
    sampling: dict[str, float] = {}
    for key in SAMPLING_KEYS:
        if values.get(key) is not None:
            sampling[key] = _number(key, values[key])
    max_new = values.get("max_new_tokens")
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1):
        raise ConfigError(f"generation config: max_new_tokens must be a positive integer, got {max_new!r}")
    try:  # a value no request could use is the config's fault: refuse it at start, not per request
        checked: dict[str, Any] = {k: int(v) if k == "top_k" else v for k, v in sampling.items()}
        SamplingParams(max_tokens=1, **checked)
    except IsvcError as exc:
        raise ConfigError(f"generation config: {exc.message}") from None
    defaults = GenerationDefaults(sampling, max_new)
    if sampling or max_new is not None:
        shown = {**sampling, **({"max_new_tokens": max_new} if max_new is not None else {})}
        origin = "the model's generation_config.json" if source == "auto" else f"--generation-config {source}"
        logger.info("default sampling parameters for the OpenAI routes from %s and its override: %s", origin, shown)
    return defaults


def _read(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConfigError(f"--generation-config: no generation_config.json in {path.parent}")
        return {}
    try:
        values = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a JSON object is needed")
    return values


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"generation config: {key} must be a number, got {value!r}")
    return value
