"""The engine on the real SmolLM2: speculation accepts drafts and changes no token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from isvc.engine import metrics
from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.params import SamplingParams
from tests.conftest import counter_value

pytestmark = pytest.mark.slow


def greedy_answers(model_dir: Path, num_speculative_tokens: int) -> list[list[int]]:
    eng = AsyncEngine(EngineConfig(model_dir=str(model_dir), num_speculative_tokens=num_speculative_tokens))
    eng.load()
    tok = eng.tokenizer
    questions = [
        "Repeat this sentence three times: the quick brown fox jumps over the lazy dog.",
        "What is the capital of France?",
    ]

    async def answer(i: int, question: str) -> list[int]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        ids: list[int] = []
        async for out in eng.generate(
            f"q{num_speculative_tokens}-{i}",
            tok.encode(text, add_special_tokens=False),
            SamplingParams(max_tokens=64, temperature=0),
        ):
            ids += out.token_ids
        return ids

    try:
        return [asyncio.run(answer(i, q)) for i, q in enumerate(questions)]
    finally:
        eng.shutdown()


def test_speculation_accepts_drafts_and_keeps_greedy_answers(smollm2_dir: Path) -> None:
    from isvc.engine import kernels

    if kernels.load() is None:
        pytest.skip("speculation runs on the native kernels only (row-exact verification)")
    before = counter_value(metrics.SPEC_ACCEPTED_TOKENS)
    speculated = greedy_answers(smollm2_dir, 3)
    assert counter_value(metrics.SPEC_ACCEPTED_TOKENS) - before >= 4  # steps that yielded several tokens
    assert speculated == greedy_answers(smollm2_dir, 0)
