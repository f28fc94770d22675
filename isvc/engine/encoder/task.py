"""Which task a model folder serves, and how a sentence-transformers folder pools: read from files, no torch.

Like KServe's huggingfaceserver, the task comes from config.json's ``architectures[0]`` by its
suffix (``isvc.tasks``, the table the control plane reads too) unless ``--task`` names one; a
task the weights cannot serve is a ConfigError at start, never a failure at the first request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isvc import tasks
from isvc.engine.client import Pooling, Task
from isvc.errors import ConfigError

# Which tasks the weights of a model whose own task is the key can also serve.
_SERVABLE = {
    Task.TEXT_GENERATION: {Task.TEXT_GENERATION, Task.TEXT_EMBEDDING},  # decoder embeddings: last token
    Task.TEXT2TEXT_GENERATION: {Task.TEXT2TEXT_GENERATION},
    Task.FILL_MASK: {Task.FILL_MASK, Task.TEXT_EMBEDDING},
    Task.SEQUENCE_CLASSIFICATION: {Task.SEQUENCE_CLASSIFICATION, Task.RERANK, Task.TEXT_EMBEDDING},
    Task.RERANK: {Task.RERANK, Task.SEQUENCE_CLASSIFICATION, Task.TEXT_EMBEDDING},
    Task.TOKEN_CLASSIFICATION: {Task.TOKEN_CLASSIFICATION, Task.TEXT_EMBEDDING},
    Task.TEXT_EMBEDDING: {Task.TEXT_EMBEDDING},
}
_ST_POOLING: dict[str, Pooling] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
}
_ST_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True, slots=True)
class EmbeddingLayout:
    """How token states become an embedding: sentence-transformers' modules, or the defaults."""

    pooling: Pooling = "mean"
    normalize: bool = True
    max_seq_length: int | None = None
    """``sentence_bert_config.json``'s ``max_seq_length``: the model was trained up to it."""


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is missing or not JSON: {exc}") from exc
    return config


def architecture(config: dict[str, Any]) -> str:
    return str((config.get("architectures") or ["?"])[0])


def natural_task(model_dir: Path, config: dict[str, Any]) -> Task | None:
    """The task the folder was saved for (``isvc.tasks``' table, shared with the control plane), or
    None when its architecture says nothing."""
    if (Path(model_dir) / "modules.json").is_file():
        return Task.TEXT_EMBEDDING  # sentence-transformers, whatever the transformer inside
    task = tasks.infer_task(config)
    return Task(task) if task is not None else None


def resolve_task(model_dir: str | Path, requested: str | None) -> Task:
    """The task to serve: ``requested`` (``--task``) checked against the weights, else the inferred one.

    Raises ConfigError (before any weights load) for an unknown task name, a folder whose
    task cannot be inferred, or a task its weights cannot serve.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    natural = natural_task(model_dir, config)
    arch = architecture(config)
    if requested is None:
        if natural is None:
            raise ConfigError(
                f"the task of architecture {arch} could not be inferred; pass --task "
                f"(one of: {', '.join(t.value for t in Task)})"
            )
        return natural
    task = parse_task(requested)
    if natural is not None and task not in _SERVABLE[natural]:
        can = ", ".join(sorted(t.value for t in _SERVABLE[natural]))
        raise ConfigError(f"--task {task.value} cannot be served by a {arch} model (it serves: {can})")
    return task


def parse_task(name: str) -> Task:
    key = name.strip().lower().replace("-", "_")
    if key in tasks.ALIASES:
        return Task(tasks.ALIASES[key])
    try:
        return Task(key)
    except ValueError:
        raise ConfigError(f"--task {name} is unknown; choose one of: {', '.join(t.value for t in Task)}") from None


def embedding_layout(model_dir: Path, decoder: bool = False) -> EmbeddingLayout:
    """Pooling and normalization from a sentence-transformers folder; without one, L2-normalized
    mean pooling (last-token pooling for a ``decoder``, whose last token has seen every other)."""
    modules_file = Path(model_dir) / "modules.json"
    if not modules_file.exists():
        return EmbeddingLayout(pooling="last" if decoder else "mean")
    modules = json.loads(modules_file.read_text())
    pooling: Pooling = "mean"
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_MODULES:
            raise ConfigError(f"sentence-transformers module {module.get('type')} is not supported by isvc")
        if kind == "Pooling":
            pooling = _st_pooling(Path(model_dir) / str(module.get("path", "1_Pooling")) / "config.json")
        normalize = normalize or kind == "Normalize"
    return EmbeddingLayout(pooling, normalize, _st_max_seq_length(Path(model_dir)))


def _st_pooling(path: Path) -> Pooling:
    config = json.loads(path.read_text()) if path.exists() else {"pooling_mode_mean_tokens": True}
    chosen = [mode for flag, mode in _ST_POOLING.items() if config.get(flag)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in _ST_POOLING]
    if others or len(chosen) != 1:
        raise ConfigError(f"{path}: isvc pools with exactly one of mean, cls, max, lasttoken (found {config})")
    return chosen[0]


def _st_max_seq_length(model_dir: Path) -> int | None:
    path = model_dir / "sentence_bert_config.json"
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get("max_seq_length")
    return int(value) if isinstance(value, int) and value > 0 else None
