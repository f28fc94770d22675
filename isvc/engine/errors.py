"""Engine failures. Only EngineDeadError means the process must exit; the rest fail one request."""

from __future__ import annotations

from isvc.errors import ContextLengthExceeded, IsvcError, Overloaded

__all__ = ["ContextLengthExceeded", "EngineDeadError", "EngineOverloaded", "GenerationFailed", "UnsupportedModel"]


class EngineDeadError(IsvcError):
    http_status = 503
    code = "engine_dead"


class GenerationFailed(IsvcError):
    """The step this request was in failed; the engine itself goes on."""

    code = "generation_failed"


class EngineOverloaded(Overloaded):
    pass


class UnsupportedModel(IsvcError):
    http_status = 400
    code = "unsupported_model"
