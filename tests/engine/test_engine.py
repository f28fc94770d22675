"""The engine on a tiny random Llama: it matches transformers, batches without changing answers, stops right."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.params import SamplingParams
from tests.conftest import counter_value


# float32: the cache at full precision, held to transformers' numbers; auto: the default
# float16 cache of the native kernels, held to transformers' tokens and to batch invariance.
@pytest.fixture(scope="module", params=["float32", "auto"])
def engine(tiny_model_dir: Path, request: pytest.FixtureRequest):
    eng = AsyncEngine(
        EngineConfig(
            model_dir=str(tiny_model_dir), max_num_batched_tokens=64, num_threads=2, kv_cache_dtype=request.param
        )
    )
    eng.load()
    yield eng
    eng.shutdown()


async def run(engine: AsyncEngine, rid: str, ids: list[int], params: SamplingParams) -> tuple[list[int], str, str]:
    tokens: list[int] = []
    text = ""
    reason = None
    async for out in engine.generate(rid, ids, params):
        tokens += out.token_ids
        text += out.text
        reason = out.finish_reason
    return tokens, text, reason or ""


def prompts(engine: AsyncEngine, n: int) -> list[list[int]]:
    tok = engine.tokenizer
    base = ["The capital of France is", "Hello world! How are", "Once upon a time there", "你好! 我们用中文"]
    return [tok.encode(base[i % 4] + " " + "x" * (i % 7)) for i in range(n)]


def test_greedy_matches_transformers_generate(engine: AsyncEngine, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = prompts(engine, 1)[0]
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False)[
        0, len(ids) :
    ].tolist()
    got, _, reason = asyncio.run(run(engine, "hf", ids, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)))
    assert got == expected and reason == "length"


def test_batch_of_32_gives_the_same_tokens_as_alone(engine: AsyncEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    ps = prompts(engine, 32)

    async def alone() -> list[list[int]]:
        return [(await run(engine, f"a{i}", p, params))[0] for i, p in enumerate(ps)]

    async def together() -> list[list[int]]:
        results = await asyncio.gather(*[run(engine, f"b{i}", p, params) for i, p in enumerate(ps)])
        return [r[0] for r in results]

    single = asyncio.run(alone())
    batched = asyncio.run(together())
    assert engine.stats()["max_batch_seen"] >= 16
    assert batched == single


def test_seeded_sampling_is_reproducible_in_any_batch(engine: AsyncEngine) -> None:
    ids = prompts(engine, 1)[0]
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)

    async def go() -> tuple[list[int], list[list[int]]]:
        first = (await run(engine, "s0", ids, params))[0]
        crowd = await asyncio.gather(
            *[
                run(
                    engine,
                    f"s{i}",
                    ids,
                    params if i % 2 else SamplingParams(max_tokens=16, temperature=1.0, ignore_eos=True),
                )
                for i in range(1, 7)
            ]
        )
        return first, [c[0] for c in crowd[::2]]

    first, seeded = asyncio.run(go())
    assert all(s == first for s in seeded)


def test_stop_string_is_trimmed_and_finishes_with_stop(engine: AsyncEngine) -> None:
    ids = prompts(engine, 1)[0]
    _, text, _ = asyncio.run(run(engine, "free", ids, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)))
    assert len(text) > 6
    stop = text[3:6]
    _, stopped, reason = asyncio.run(
        run(engine, "stop", ids, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=(stop,)))
    )
    assert reason == "stop"
    assert stopped == text[: text.index(stop)]


def test_context_length_is_refused_before_any_work(engine: AsyncEngine) -> None:
    from isvc.errors import ContextLengthExceeded

    with pytest.raises(ContextLengthExceeded) as err:
        engine.check_request([1] * 200, 100)
    assert "256" in err.value.message and "300" in err.value.message


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(engine: AsyncEngine) -> None:
    from isvc.engine.errors import GenerationFailed

    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    # An out-of-vocabulary id (the HTTP layer refuses it; here it reaches the model) makes the step raise.
    with pytest.raises(GenerationFailed):
        asyncio.run(run(engine, "bad", [10**6], params))
    tokens, _, reason = asyncio.run(run(engine, "good", prompts(engine, 1)[0], params))
    assert len(tokens) == 4 and reason == "length"


def test_out_of_vocabulary_prompt_ids_are_refused_up_front(engine: AsyncEngine) -> None:
    from isvc.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        engine.check_request([1, 10**6], 4)
    assert err.value.param == "prompt" and "1000000" in err.value.message


def test_prompt_logprobs_across_prefill_chunks_match_transformers(engine: AsyncEngine, tiny_model_dir: Path) -> None:
    """A 150-token prompt is prefilled in 64-token chunks; each prompt token is still scored."""
    from transformers import AutoModelForCausalLM

    ids = (prompts(engine, 1)[0] * 40)[:150]
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        expected = torch.log_softmax(hf(torch.tensor([ids])).logits[0], dim=-1)
    expected = expected[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]

    async def go() -> list:
        async for out in engine.generate(
            "echo", ids, SamplingParams(max_tokens=1, temperature=0, logprobs=0, prompt_logprobs=0)
        ):
            if out.prompt_logprobs:
                return out.prompt_logprobs
        return []

    got = asyncio.run(go())
    assert got[0] is None and [e.token_id for e in got[1:]] == ids[1:]
    exact = engine.config.kv_cache_dtype == "float32" or engine.core.model.kv_dtype == torch.float32
    # float16 keys and values carry ~3 significant digits: on this random model's large logits
    # that moves log-probabilities by up to ~0.04.
    assert torch.allclose(torch.tensor([e.logprob for e in got[1:]]), expected, atol=1e-4 if exact else 0.1)


def test_prefix_reuse_gives_the_same_tokens_as_computing_the_prompt(tiny_model_dir: Path) -> None:
    """Prompts sharing a 40-token start: the second reuses it and answers as an engine without reuse."""
    from isvc.engine import kernels, metrics

    if kernels.load() is None:
        pytest.skip("prefix reuse runs on the native kernels only (exact K/V)")

    def answers(enable: bool) -> list[list[int]]:
        eng = AsyncEngine(
            EngineConfig(
                model_dir=str(tiny_model_dir), max_num_batched_tokens=64, num_threads=2, enable_prefix_caching=enable
            )
        )
        eng.load()
        try:
            shared = (prompts(eng, 1)[0] * 10)[:40]
            params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
            return [
                asyncio.run(run(eng, f"p{enable}{i}", shared + tail, params))[0]
                for i, tail in enumerate([[5, 6, 7], [9, 10], [5, 6, 7, 8, 9]])
            ]
        finally:
            eng.shutdown()

    before = counter_value(metrics.PREFIX_CACHE_HIT_TOKENS)
    with_reuse = answers(True)
    assert counter_value(metrics.PREFIX_CACHE_HIT_TOKENS) - before >= 40 + 43  # 2nd and 3rd prompts
    assert with_reuse == answers(False)


def test_speculation_gives_the_same_tokens_as_plain_greedy_decoding(tiny_model_dir: Path) -> None:
    """One stream at a time (where drafts run): the same tokens with and without speculation.

    Accepted drafts are checked on SmolLM2 (tests/engine/test_smollm2_engine.py)."""
    from isvc.engine import kernels, metrics

    if kernels.load() is None:
        pytest.skip("speculation runs on the native kernels only (row-exact verification)")

    def answers(k: int) -> list[list[int]]:
        eng = AsyncEngine(EngineConfig(model_dir=str(tiny_model_dir), num_threads=2, num_speculative_tokens=k))
        eng.load()
        try:
            repetitive = (prompts(eng, 1)[0] * 6)[:36]
            return [
                asyncio.run(
                    run(eng, f"spec{k}-{i}", ids, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
                )[0]
                for i, ids in enumerate([repetitive, *prompts(eng, 3)])
            ]
        finally:
            eng.shutdown()

    before = counter_value(metrics.SPEC_DRAFT_TOKENS)
    speculated = answers(3)
    assert counter_value(metrics.SPEC_DRAFT_TOKENS) > before  # drafts ran (this random model rejects them)
    assert speculated == answers(0)
    assert all(len(a) == 40 for a in speculated)  # never past max_tokens


def test_a_stop_string_inside_a_verified_run_ends_the_request_at_that_token(tiny_model_dir: Path) -> None:
    """The scheduler appends a verified run whole; a stop string in its middle drops the tokens after it."""
    from isvc.engine.core import load_tokenizer
    from isvc.engine.metrics import EngineMetrics
    from isvc.engine.output_processor import OutputProcessor
    from isvc.engine.outputs import RequestOutput
    from isvc.engine.request import EngineRequest
    from isvc.engine.sampler import Sampler
    from isvc.engine.scheduler import Scheduler, StepTokens

    tok = load_tokenizer(str(tiny_model_dir))
    w, orr, ld, bang = tok.encode(" world!", add_special_tokens=False)
    assert [tok.decode([i]) for i in (w, orr, ld, bang)] == [" w", "or", "ld", "!"]
    sched = Scheduler(max_num_seqs=2, max_num_batched_tokens=64)
    output = OutputProcessor(tok, sched, Sampler(), EngineMetrics("tiny-unit"))
    req = EngineRequest("r", tok.encode("Hello"), SamplingParams(max_tokens=10, temperature=0, stop=("orl",)))
    outs: list[RequestOutput] = []
    with output.metrics.mute():
        assert output.add(req, outs.append)
        sched.add(req)
        for tokens in ([w], [orr, ld, bang]):  # the prompt's step, then a verified run
            step = StepTokens({req: tokens})
            output.process(sched.update_from_output(sched.schedule(), step), step)
    assert req.output_token_ids == [w, orr, ld]
    assert [t for o in outs for t in o.token_ids] == [w, orr, ld]
    assert "".join(o.text for o in outs) == " w"
    assert outs[-1].finish_reason == "stop" and outs[-1].num_output_tokens == 3
    assert not sched.has_work()
