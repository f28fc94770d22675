"""The generative engine on tiny random encoder-decoder models (T5, BART): it equals transformers'
``generate`` token for token and logprob for logprob, batches and chunks without changing answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from isvc.engine.async_engine import AsyncEngine
from isvc.engine.client import Task
from isvc.engine.config import EngineConfig
from isvc.engine.factory import build_engine
from isvc.engine.params import SamplingParams
from isvc.errors import InvalidRequest
from tests.seq2seq_fixtures import tiny_bart_dir, tiny_t5_dir  # noqa: F401

PROMPTS = [
    "The capital of France is Paris.",
    "Hello world! How are you today?",
    "A cross encoder reads the query",
    "Embeddings map sentences to vectors; similar sentences get similar vectors.",
    "George Washington lived in Virginia",
    "0123456789 + - * /",
    "today? I am fine, thank you.",  # both models end these at EOS
    "fine, thank you.",  # T5
    "France is Paris. The",  # BART
]


@pytest.fixture(scope="module", params=["t5", "bart"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(f"tiny_{request.param}_dir"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[AsyncEngine]:
    eng = build_engine(EngineConfig(model_dir=str(model_dir), max_num_batched_tokens=64, num_threads=2))
    assert isinstance(eng, AsyncEngine)
    eng.load()
    yield eng
    eng.shutdown()


async def run(engine: AsyncEngine, rid: str, ids: list[int], params: SamplingParams):  # type: ignore[no-untyped-def]
    tokens: list[int] = []
    logprobs: list[float] = []
    text = ""
    reason = None
    async for out in engine.generate(rid, ids, params):
        tokens += out.token_ids
        logprobs += [lp.logprob for lp in out.logprobs or []]
        text += out.text
        reason = out.finish_reason
    return tokens, logprobs, text, reason


def reference(model_dir: Path, ids: list[int], max_new_tokens: int, **kw: object) -> tuple[list[int], list[float]]:
    """transformers' greedy generate: the output tokens (without the decoder's start token) and
    each one's log-probability under the raw logits (before ``min_new_tokens`` masks EOS)."""
    from transformers import AutoModelForSeq2SeqLM

    hf = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    out = hf.generate(
        torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
        return_dict_in_generate=True, **kw,
    )  # fmt: skip
    tokens = out.sequences[0, 1:].tolist()
    logprobs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.logits, tokens)]
    return tokens, logprobs


def test_the_engine_serves_the_text2text_task(engine: AsyncEngine, model_dir: Path) -> None:
    info = engine.model_info
    assert info.task is Task.TEXT2TEXT_GENERATION
    assert info.architecture.endswith("ForConditionalGeneration") and info.hidden_size == 32


def test_greedy_equals_transformers_token_for_token_and_logprob_for_logprob(
    engine: AsyncEngine, model_dir: Path
) -> None:
    tok = engine.tokenizer
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        expected, expected_lp = reference(model_dir, ids, 12, min_new_tokens=12)
        params = SamplingParams(max_tokens=12, min_tokens=12, temperature=0, logprobs=0)
        got, got_lp, text, reason = asyncio.run(run(engine, "hf", ids, params))
        assert got == expected and reason == "length"
        assert got_lp == pytest.approx(expected_lp, abs=1e-4)
        assert text == tok.decode(got, skip_special_tokens=True)


def test_it_stops_at_the_models_eos_as_transformers_does(engine: AsyncEngine, model_dir: Path) -> None:
    tok = engine.tokenizer
    stopped = 0
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        expected, _ = reference(model_dir, ids, 24)
        got, _, text, reason = asyncio.run(run(engine, "eos", ids, SamplingParams(max_tokens=24, temperature=0)))
        assert got == expected  # EOS, when it comes, is the last token id (as vLLM's), not in the text
        assert text == tok.decode(got, skip_special_tokens=True)
        if expected[-1] == tok.eos_token_id:
            stopped += 1
            assert reason == "stop"
        else:
            assert reason == "length"
    assert stopped, "at least one prompt ends at EOS (else the test says nothing about stopping)"


def test_a_batch_gives_the_same_tokens_as_alone(engine: AsyncEngine) -> None:
    tok = engine.tokenizer
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    prompts = [tok.encode(PROMPTS[i % len(PROMPTS)] + " x" * (i % 5)) for i in range(16)]

    async def together() -> list[list[int]]:
        results = await asyncio.gather(*[run(engine, f"b{i}", p, params) for i, p in enumerate(prompts)])
        return [r[0] for r in results]

    single = [asyncio.run(run(engine, f"a{i}", p, params))[0] for i, p in enumerate(prompts)]
    assert asyncio.run(together()) == single
    assert engine.stats()["max_batch_seen"] >= 8


def test_a_prompt_longer_than_a_steps_budget_is_encoded_whole(model_dir: Path, engine: AsyncEngine) -> None:
    """A 16-token step budget cuts the prompt into chunks; the encoder still reads it all at once."""
    chunked = build_engine(EngineConfig(model_dir=str(model_dir), max_num_batched_tokens=16, num_threads=2))
    chunked.load()
    try:
        ids = engine.tokenizer.encode(" ".join(PROMPTS[:3]))
        assert len(ids) > 40
        params = SamplingParams(max_tokens=8, min_tokens=8, temperature=0)
        expected, _ = reference(model_dir, ids, 8, min_new_tokens=8)
        assert asyncio.run(run(chunked, "long", ids, params))[0] == expected  # type: ignore[arg-type]
    finally:
        chunked.shutdown()


def test_seeded_sampling_is_reproducible(engine: AsyncEngine) -> None:
    ids = engine.tokenizer.encode(PROMPTS[0])
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=7, ignore_eos=True)
    first = asyncio.run(run(engine, "s1", ids, params))[0]
    assert asyncio.run(run(engine, "s2", ids, params))[0] == first


def test_prompt_logprobs_are_refused_with_a_reason(engine: AsyncEngine) -> None:
    ids = engine.tokenizer.encode(PROMPTS[0])

    async def ask() -> None:
        async for _ in engine.generate("echo", ids, SamplingParams(max_tokens=2, prompt_logprobs=1)):
            pass

    with pytest.raises(InvalidRequest, match="decoder-only") as caught:
        asyncio.run(ask())
    assert caught.value.param == "echo"


def test_repetition_penalty_counts_the_decoders_tokens_as_transformers_does(
    engine: AsyncEngine, model_dir: Path
) -> None:
    """Not the encoder's input: a summary may repeat its article's words."""
    tok = engine.tokenizer
    for prompt in PROMPTS[:4]:
        ids = tok.encode(prompt)
        expected, _ = reference(model_dir, ids, 10, min_new_tokens=10, repetition_penalty=2.0)
        params = SamplingParams(max_tokens=10, min_tokens=10, temperature=0, repetition_penalty=2.0)
        assert asyncio.run(run(engine, "rep", ids, params))[0] == expected


def test_a_forced_first_token_comes_first(tiny_bart_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """bart-large-cnn forces <s>, mBART/NLLB the target language: generation_config's forced_bos_token_id."""
    import json
    import shutil

    folder = tmp_path / "forced"
    shutil.copytree(tiny_bart_dir, folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "forced_bos_token_id": 0}))
    forced = build_engine(EngineConfig(model_dir=str(folder), num_threads=2))
    forced.load()
    try:
        ids = forced.tokenizer.encode(PROMPTS[0])
        expected, _ = reference(folder, ids, 6, min_new_tokens=6)
        got = asyncio.run(run(forced, "bos", ids, SamplingParams(max_tokens=6, min_tokens=6, temperature=0)))[0]  # type: ignore[arg-type]
        assert got == expected and got[0] == 0
    finally:
        forced.shutdown()


def test_one_requests_failure_in_the_model_is_its_own(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault we cannot cause with valid input (ids are checked first), injected in one request's encoder."""
    runner = engine.core.runner  # type: ignore[union-attr]
    encode = runner._encode

    def failing(req):  # type: ignore[no-untyped-def]
        if req.request_id == "bad":
            raise RuntimeError("injected")
        return encode(req)

    monkeypatch.setattr(runner, "_encode", failing)
    ids = engine.tokenizer.encode(PROMPTS[1])
    params = SamplingParams(max_tokens=6, min_tokens=6, temperature=0)

    async def both() -> list[object]:
        return await asyncio.gather(
            run(engine, "bad", ids, params), run(engine, "good", ids, params), return_exceptions=True
        )

    bad, good = asyncio.run(both())
    assert isinstance(bad, Exception) and "injected" in str(bad)
    assert not isinstance(good, BaseException) and len(good[0]) == 6 and good[3] == "length"


def test_held_states_over_the_budget_finish_the_longest_request(model_dir: Path) -> None:
    small = build_engine(EngineConfig(model_dir=str(model_dir), num_threads=2, kv_cache_space_gb=2e-6))  # ~2 kB
    small.load()
    try:
        ids = small.tokenizer.encode(PROMPTS[3])
        tokens, _, _, reason = asyncio.run(run(small, "big", ids, SamplingParams(max_tokens=40, min_tokens=40)))  # type: ignore[arg-type]
        assert reason == "length" and 0 < len(tokens) < 40
        again = asyncio.run(run(small, "next", ids[:4], SamplingParams(max_tokens=1)))  # type: ignore[arg-type]
        assert len(again[0]) == 1  # the engine goes on
    finally:
        small.shutdown()


def test_learned_positions_bound_max_model_len(tiny_bart_dir: Path) -> None:  # noqa: F811
    from isvc.engine.errors import UnsupportedModel

    too_long = build_engine(EngineConfig(model_dir=str(tiny_bart_dir), max_model_len=4096, num_threads=2))
    with pytest.raises(UnsupportedModel, match="exceeds the model's 128 positions"):
        too_long.load()
