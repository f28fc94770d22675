"""plan_batches without torch: similar lengths together, within the row cap and the padded-token budget."""

from __future__ import annotations

from isvc.engine.client import EncodeInput, PoolingParams
from isvc.engine.encoder.batching import EncodeRequest, plan_batches


def _request(n: int) -> EncodeRequest:
    return EncodeRequest(f"r{n}", EncodeInput(list(range(n))), PoolingParams("embed"), lambda _: None)


def test_batches_group_similar_lengths_within_the_budget() -> None:
    waiting = [_request(n) for n in (50, 3, 48, 4, 5, 49)]
    batches = plan_batches(waiting, max_rows=8, max_tokens=100)
    assert [[r.num_tokens for r in b] for b in batches] == [[3, 4, 5], [48, 49], [50]]
    for batch in batches:  # padded once, to the batch's longest input
        assert len(batch) * max(r.num_tokens for r in batch) <= 100


def test_the_row_cap_splits_a_batch() -> None:
    batches = plan_batches([_request(4) for _ in range(10)], max_rows=4, max_tokens=10_000)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_an_input_longer_than_the_budget_runs_alone() -> None:
    batches = plan_batches([_request(5), _request(300), _request(6)], max_rows=8, max_tokens=64)
    assert [[r.num_tokens for r in b] for b in batches] == [[5, 6], [300]]
