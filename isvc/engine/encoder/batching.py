"""How waiting encode requests become forward passes: length buckets under a padded-token budget (no torch).

Every request the engine thread finds waiting is planned at once: sorted by length, so each
batch holds inputs of similar length and padding wastes little, then cut greedily wherever one
more row would exceed ``max_rows`` or the padded size (rows x longest input) would exceed
``max_tokens``. A single input longer than the budget still runs, alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from isvc.engine.client import EncodeInput, PoolingParams

Rows = list[float] | list[list[float]]
Done = Callable[[Rows | BaseException], None]


@dataclass(slots=True, eq=False)
class EncodeRequest:
    """One input waiting for (or in) a forward pass; ``done`` is called once, on the engine thread."""

    request_id: str
    inputs: EncodeInput
    params: PoolingParams
    done: Done
    arrival_s: float = 0.0
    cancelled: bool = field(default=False)
    """Set by the event loop when the caller went away: the engine skips it if not yet running."""

    @property
    def num_tokens(self) -> int:
        return len(self.inputs.token_ids)


def plan_batches(waiting: list[EncodeRequest], max_rows: int, max_tokens: int) -> list[list[EncodeRequest]]:
    """Cut ``waiting`` into batches of similar lengths, each within ``max_rows`` and ``max_tokens`` padded."""
    batches: list[list[EncodeRequest]] = []
    batch: list[EncodeRequest] = []
    for request in sorted(waiting, key=lambda r: r.num_tokens):
        # ascending order: the newcomer is the batch's longest input, so padding is rows x its length
        if batch and (len(batch) >= max_rows or (len(batch) + 1) * request.num_tokens > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(request)
    if batch:
        batches.append(batch)
    return batches
