"""build_engine: the engine for a model folder's task — the generative engine (decoder or
encoder-decoder models) or the encoder engine.

The composition root (``isvc serve``'s main) calls it; everything after sees only ``EngineClient``.
"""

from __future__ import annotations

from isvc.engine.client import EngineClient, Task
from isvc.engine.config import EngineConfig
from isvc.engine.encoder.task import resolve_task


def engine_task(model_dir: str, requested: str | None) -> Task:
    """The task the folder will serve (``requested`` checked against its weights, or inferred);
    ConfigError when it cannot be served. Reads config files only: cheap, before any weights load."""
    return resolve_task(model_dir, requested)


def build_engine(config: EngineConfig) -> EngineClient:
    """An unloaded engine for ``config``'s task (call ``load()`` next)."""
    task = engine_task(config.model_dir, config.task)
    if task.generative:
        from isvc.engine.async_engine import AsyncEngine

        return AsyncEngine(config, task=task)
    from isvc.engine.encoder import AsyncEncoderEngine

    return AsyncEncoderEngine(config, task)
