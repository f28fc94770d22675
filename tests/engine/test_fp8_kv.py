"""--kv_cache_dtype fp8_e5m2: the native attention stores the bytes torch's conversion gives and attends
over them exactly as over their float values; the engine serves from such a cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from isvc.engine import kernels
from isvc.engine.async_engine import AsyncEngine
from isvc.engine.config import EngineConfig
from isvc.engine.kernels.ops import NativeOps
from isvc.engine.params import SamplingParams
from tests.engine.test_engine import prompts, run


@pytest.fixture(scope="module")
def ops() -> NativeOps:
    lib = kernels.load()
    if lib is None:
        pytest.skip("native kernels unavailable here")
    return NativeOps(lib, 2, head_dim=64, group=3)


def test_stored_bytes_equal_torchs_rounding_everywhere(ops: NativeOps) -> None:
    """Normal, subnormal, overflowing, halfway and special values, both signs."""
    D, KVH, Dh = 64, 3, 64
    gen = torch.Generator().manual_seed(0)
    magnitudes = torch.exp2(torch.empty(D, KVH, Dh).uniform_(-26, 18, generator=gen))
    k = magnitudes * torch.randn(D, KVH, Dh, generator=gen).sign()
    halfway = torch.tensor([1.125, 1.375, 2.0**-15 * 1.5, 2.0**-16 * 0.5, 57344.0, 61440.0, 65536.0])
    k.view(-1)[: len(halfway)] = halfway
    k.view(-1)[len(halfway) : len(halfway) + 4] = torch.tensor([0.0, -0.0, float("inf"), -float("inf")])
    v = torch.randn(D, KVH, Dh, generator=gen)
    kc = torch.zeros(1, KVH, D, Dh, dtype=torch.float8_e5m2)
    vc = torch.zeros_like(kc)
    q = torch.randn(D, KVH * 3, Dh, generator=gen)
    ops.attention(q, k, v, kc, vc, torch.zeros(D, dtype=torch.long), torch.arange(D))
    for cache, values in ((kc, k), (vc, v)):
        stored = cache[0].transpose(0, 1).contiguous().view(torch.uint8)
        assert torch.equal(stored, values.to(torch.float8_e5m2).view(torch.uint8))


def test_attention_over_the_cache_equals_attention_over_its_values(ops: NativeOps) -> None:
    D, KVH, G, Dh = 7, 3, 3, 64
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(D, n, Dh, generator=gen) for n in (KVH * G, KVH, KVH))
    kc = torch.zeros(2, KVH, 16, Dh, dtype=torch.float8_e5m2)
    vc = torch.zeros_like(kc)
    out = ops.attention(q, k, v, kc, vc, torch.ones(D, dtype=torch.long), torch.arange(D)).view(D, KVH * G, Dh)
    kf, vf = kc[1, :, :D].float(), vc[1, :, :D].float()
    for d in range(D):
        for h in range(KVH * G):
            scores = (kf[h // G, : d + 1] @ q[d, h]) * Dh**-0.5
            torch.testing.assert_close(out[d, h], torch.softmax(scores, 0) @ vf[h // G, : d + 1], rtol=1e-5, atol=1e-5)


def test_the_engine_serves_from_an_fp8_cache(tiny_model_dir: Path, ops: NativeOps) -> None:
    config = EngineConfig(model_dir=str(tiny_model_dir), kv_cache_dtype="fp8_e5m2", num_threads=2)
    engine = AsyncEngine(config)
    engine.load()
    try:
        assert engine.core is not None and engine.core.model.kv_dtype == torch.float8_e5m2  # type: ignore[union-attr]
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        ps = prompts(engine, 8)

        async def together() -> list[list[int]]:
            return [r[0] for r in await asyncio.gather(*[run(engine, f"b{i}", p, params) for i, p in enumerate(ps)])]

        alone = [asyncio.run(run(engine, f"a{i}", p, params))[0] for i, p in enumerate(ps)]
        assert all(len(t) == 12 for t in alone)
        assert asyncio.run(together()) == alone  # rows stay independent on an fp8 cache too
    finally:
        engine.shutdown()
