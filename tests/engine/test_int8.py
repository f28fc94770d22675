"""--quantization int8: the integer linear (exact, row-independent, close to float) and the engine on it."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import torch

from isvc.engine import kernels
from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.errors import UnsupportedModel
from isvc.engine.kernels.int8 import Int8Weight, dequantize, int8_linear, quantize_rows, quantize_weight
from isvc.engine.llama import LlamaModel
from isvc.engine.params import SamplingParams
from isvc.engine.step import ChunkInput, StepLayout
from tests.engine.test_engine import prompts, run


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def exact(x: torch.Tensor, w) -> torch.Tensor:
    """The definition: integer activations times integer weights, summed exactly, scaled back."""
    xq, xs = quantize_rows(x)
    return (xq.double() @ w.q.double().t()).float()[:, : w.out_features].mul_(xs).mul_(w.scale[: w.out_features])


@pytest.fixture(scope="module")
def native() -> None:
    if kernels.load() is None:
        pytest.skip("native kernels unavailable here")


@pytest.mark.parametrize("portable", [False, True], ids=["this-cpu", "avx2-tiles"])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 13, 40])
@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (12, 64), (8, 48), (1001, 64), (20, 40)])
def test_native_int8_linear_equals_the_exact_integer_product(native, m, n, k, portable):
    """Both instruction paths (VNNI where the CPU has it, AVX2), any row count, a vocabulary-like
    N off the tiles (1001), and a K off the kernel (40: the torch path) -- the same bits."""
    x, w = randn(m, k, seed=m) * 3, quantize_weight(randn(n, k, seed=n))
    assert torch.equal(int8_linear(x, w, portable=portable), exact(x, w))
    out = randn(m, n, seed=1)
    assert torch.equal(int8_linear(x, w, out=out.clone(), portable=portable), out + exact(x, w))
    b = randn(n, seed=2)
    assert torch.equal(int8_linear(x, w, b, portable=portable), exact(x, w) + b)


def test_a_row_with_nan_or_inf_gives_nan_and_leaves_its_neighbours_alone(native):
    x, w = randn(3, 64, seed=7), quantize_weight(randn(16, 64, seed=8))
    x[0, 5], x[2, 9] = float("nan"), float("inf")
    y = int8_linear(x, w)
    assert y[0].isnan().all() and y[2].isnan().all()
    assert torch.equal(y[1], int8_linear(x[1:2], w)[0])


def test_int8_linear_is_close_to_the_float_product():
    x, wf = randn(16, 576, seed=3), randn(960, 576, seed=4)
    w = quantize_weight(wf)
    assert (dequantize(w) - wf).abs().le(w.scale[:, None] / 2 + 1e-7).all()  # rounding to the nearest step
    want = torch.nn.functional.linear(x, wf)
    err = (int8_linear(x, w) - want).norm() / want.norm()
    assert err < 0.01


def test_a_row_is_bit_identical_alone_or_in_any_batch(native):
    x, w = randn(40, 576, seed=5), quantize_weight(randn(960, 576, seed=6))
    full = int8_linear(x, w)
    for m in (1, 2, 5, 7, 9, 17):
        assert torch.equal(int8_linear(x[:m], w), full[:m])
    assert all(torch.equal(int8_linear(x[i : i + 1], w), full[i : i + 1]) for i in (0, 21, 39))


def logits(model: LlamaModel, ids: list[int]) -> torch.Tensor:
    cache = model.new_cache(1, 1 << 26)
    cache.ensure(1, len(ids))
    step = StepLayout(1, [], [], [], [ChunkInput(0, ids, 0)], list(range(len(ids))), [], [], [])
    return model.forward(step, cache)


def test_int8_model_logits_follow_the_float_model(tiny_model_dir: Path):
    ids = list(range(3, 40))
    f = logits(LlamaModel(tiny_model_dir, torch.float32, None), ids)
    q = logits(LlamaModel(tiny_model_dir, torch.float32, None, quantization="int8"), ids)
    # a random model with wild weights (initializer_range 0.5) is touchier than a trained one,
    # and its int8 embedding rows move every input; bench/perplexity.py measures the real model
    cos = torch.nn.functional.cosine_similarity(f, q, dim=-1)
    assert cos.median() > 0.995 and cos.min() > 0.95
    assert (f.argmax(-1) == q.argmax(-1)).float().mean() > 0.85


def test_int8_model_keeps_one_int8_table_for_embedding_and_tied_head(tiny_model_dir: Path):
    model = LlamaModel(tiny_model_dir, torch.float32, None, quantization="int8")
    assert isinstance(model.embed, Int8Weight) and model.lm_head is model.embed
    weights = [getattr(layer, f.name) for layer in model.layers for f in dataclasses.fields(layer)]
    floats = [t for t in weights if isinstance(t, torch.Tensor)]
    assert all(t.dim() == 1 for t in floats)  # norms (and biases) only: no float matrix stays behind


def test_int8_needs_a_float32_model_and_names_what_it_supports(tiny_model_dir: Path):
    with pytest.raises(UnsupportedModel, match="float32"):
        LlamaModel(tiny_model_dir, torch.bfloat16, None, quantization="int8")
    with pytest.raises(UnsupportedModel, match="use int8, or a gptq or awq checkpoint"):
        LlamaModel(tiny_model_dir, torch.float32, None, quantization="fp8")
    with pytest.raises(UnsupportedModel, match="has no quantization_config"):
        LlamaModel(tiny_model_dir, torch.float32, None, quantization="gptq")


def test_int8_engine_batches_speculates_and_reuses_prefixes_without_changing_answers(native, tiny_model_dir: Path):
    """Row independence holds through the engine: a batch of 16 answers as each alone, and prompt
    lookup drafts and prefix reuse (which need row-exact steps) change no token."""

    def engine(**kw) -> AsyncEngine:
        eng = AsyncEngine(
            EngineConfig(
                model_dir=str(tiny_model_dir), quantization="int8", num_threads=2, max_num_batched_tokens=64, **kw
            )
        )
        eng.load()
        return eng

    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    eng = engine()
    try:
        ps = prompts(eng, 16)
        ps[0] = (ps[0] * 6)[:36]  # repetitive: prompt lookup drafts for it
        alone = [asyncio.run(run(eng, f"a{i}", p, params))[0] for i, p in enumerate(ps)]

        async def together() -> list[list[int]]:
            return [r[0] for r in await asyncio.gather(*[run(eng, f"b{i}", p, params) for i, p in enumerate(ps)])]

        assert asyncio.run(together()) == alone
        again = asyncio.run(run(eng, "c", ps[0], params))[0]  # its prompt is in the prefix cache now
        assert again == alone[0]
    finally:
        eng.shutdown()
    plain = engine(num_speculative_tokens=0, enable_prefix_caching=False)
    try:
        assert [asyncio.run(run(plain, f"p{i}", p, params))[0] for i, p in enumerate(ps)] == alone
    finally:
        plain.shutdown()
