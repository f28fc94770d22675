"""vLLM's and OpenAI's sampling fields: min_p, repetition_penalty, logit_bias, allowed_token_ids, min_tokens.

Sampler rows are checked against transformers' own logits processors; the engine on the tiny
model against transformers' generate and against what each field promises.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.params import SamplingParams
from isvc.engine.sampler import Sampler
from isvc.errors import InvalidRequest


def _greedy(logits: torch.Tensor, params: SamplingParams, output: list[int], prompt: list[int] | None = None) -> int:
    sampler = Sampler(eos_ids=(2,))
    result = sampler.sample(logits[None, :].clone(), ["r"], [params], [output], [prompt or []])
    return result.token_ids[0]


def test_repetition_penalty_equals_transformers() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    logits = torch.randn(50)
    prompt, output = [3, 7, 7, 11], [11, 20]
    expected = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([prompt + output]), logits[None, :].clone())[0]
    row = logits.clone()
    Sampler()._shape(row, SamplingParams(max_tokens=4, repetition_penalty=1.7), output, prompt)
    assert torch.allclose(row, expected)


def test_min_p_keeps_what_transformers_keeps() -> None:
    from transformers import MinPLogitsWarper

    torch.manual_seed(1)
    logits = torch.randn(4, 64) * 3
    expected = MinPLogitsWarper(0.2)(torch.zeros(4, 1, dtype=torch.long), logits.clone()) > -float("inf")
    sampler = Sampler(default_seed=3)
    params = [SamplingParams(max_tokens=4, min_p=0.2)] * 4
    picks = torch.stack(
        [torch.tensor(sampler.sample(logits.clone(), ["a"] * 4, params, [[]] * 4).token_ids) for _ in range(300)]
    )
    for row in range(4):
        assert expected[row, picks[:, row]].all()  # never a token min_p drops
        assert len(set(picks[:, row].tolist())) > 1 or expected[row].sum() == 1  # still sampling


def test_logit_bias_and_allowed_token_ids_steer_a_greedy_pick() -> None:
    logits = torch.zeros(10)
    logits[4] = 5.0
    assert _greedy(logits, SamplingParams(max_tokens=1, temperature=0), []) == 4
    assert _greedy(logits, SamplingParams(max_tokens=1, temperature=0, logit_bias=((6, 100.0),)), []) == 6
    assert _greedy(logits, SamplingParams(max_tokens=1, temperature=0, logit_bias=((4, -100.0),)), []) != 4
    assert _greedy(logits, SamplingParams(max_tokens=1, temperature=0, allowed_token_ids=(1, 8)), []) in (1, 8)


def test_min_tokens_masks_eos_and_stop_token_ids_until_reached() -> None:
    logits = torch.zeros(10)
    logits[2], logits[5], logits[7] = 9.0, 8.0, 1.0  # 2 is EOS, 5 a stop token id
    params = SamplingParams(max_tokens=5, temperature=0, min_tokens=2, stop_token_ids=(5,))
    assert _greedy(logits, params, [1]) == 7  # one token so far: neither EOS nor 5 yet
    assert _greedy(logits, params, [1, 1]) == 2  # two: the output may end


def test_shaping_runs_in_vllms_order_and_never_masks_a_whole_row() -> None:
    row = torch.zeros(10)
    row[3] = 2.0
    params = SamplingParams(max_tokens=4, repetition_penalty=2.0, logit_bias=((3, 1.0),))
    Sampler()._shape(row, params, [3], [])
    assert row[3] == pytest.approx((2.0 + 1.0) / 2.0)  # the bias first, then the penalty
    only_eos = SamplingParams(max_tokens=4, temperature=0, allowed_token_ids=(2,), min_tokens=3)
    assert _greedy(torch.zeros(10), only_eos, []) == 2  # min_tokens gives way rather than leave no token


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"logit_bias": ((3, 101.0),)}, "logit_bias"),
        ({"allowed_token_ids": ()}, "allowed_token_ids"),
        ({"min_tokens": 9}, "min_tokens"),
    ],
)
def test_out_of_range_fields_are_refused_naming_them(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        SamplingParams(max_tokens=8, **fields)
    assert refused.value.param == param


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    eng = AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir), num_threads=2))
    eng.load()
    yield eng
    eng.shutdown()


async def _tokens(engine: AsyncEngine, ids: list[int], params: SamplingParams) -> tuple[list[int], str | None]:
    tokens: list[int] = []
    reason = None
    async for out in engine.generate("r", ids, params):
        tokens += out.token_ids
        reason = out.finish_reason
    return tokens, reason


def test_greedy_with_repetition_penalty_equals_transformers_generate(engine: AsyncEngine, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = engine.tokenizer.encode("Once upon a time there was")
    expected = hf.generate(
        torch.tensor([ids]), max_new_tokens=10, min_new_tokens=10, do_sample=False, repetition_penalty=1.5
    )[0, len(ids) :].tolist()
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, repetition_penalty=1.5)
    got, _ = asyncio.run(_tokens(engine, ids, params))
    assert got == expected


def test_min_tokens_holds_back_an_eos_the_model_is_pushed_to(engine: AsyncEngine) -> None:
    eos = engine.tokenizer.eos_token_id
    ids = engine.tokenizer.encode("Hello world")
    pushed = SamplingParams(max_tokens=10, temperature=0, logit_bias=((eos, 100.0),))
    assert asyncio.run(_tokens(engine, ids, pushed)) == ([eos], "stop")  # alone, EOS comes first
    held = SamplingParams(max_tokens=10, temperature=0, logit_bias=((eos, 100.0),), min_tokens=4)
    tokens, reason = asyncio.run(_tokens(engine, ids, held))
    assert reason == "stop" and len(tokens) == 5 and tokens[-1] == eos and eos not in tokens[:4]
