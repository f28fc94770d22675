"""The native kernels against the torch ops they replace (TorchOps is the reference)."""

from __future__ import annotations

import pytest
import torch

from isvc.engine import kernels
from isvc.engine.kernels import NativeOps, TorchOps
from isvc.engine.llama import _chunk_attention, _chunk_mask, _DecodeAttention
from isvc.engine.step import ChunkInput, StepLayout

REF = TorchOps()


@pytest.fixture(scope="module")
def native() -> NativeOps:
    lib = kernels.load()
    if lib is None:
        pytest.skip("native kernels unavailable here")
    return NativeOps(lib, num_threads=2, head_dim=64, group=3)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 32, 67])
@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (44, 64), (8, 8)])
def test_linear_matches_torch(native, m, n, k):
    x, w, b = randn(m, k, seed=m), randn(n, k, seed=n), randn(n, seed=k)
    close(native.linear(x, w), REF.linear(x, w))
    close(native.linear(x, w, b), REF.linear(x, w, b))
    out = randn(m, n, seed=1)
    close(native.linear_add_(out.clone(), x, w), REF.linear_add_(out.clone(), x, w))


def test_linear_row_is_bit_identical_alone_or_in_any_batch(native):
    """Batch invariance at the source: each tile shape reduces in the same order."""
    x, w = randn(32, 576, seed=3), randn(960, 576, seed=4)
    full = native.linear(x, w)
    for m in (5, 7, 12, 13):  # tails of 1, 2 and 3 rows, and M == 1 (its own 8-row tile)
        assert torch.equal(native.linear(x[:m], w), full[:m])
    assert all(torch.equal(native.linear(x[i : i + 1], w), full[i : i + 1]) for i in (0, 17, 31))


def test_linear_reads_strided_input(native):
    x, w = randn(6, 128)[:, :64], randn(16, 64)  # a column slice: not contiguous
    close(native.linear(x, w), REF.linear(x, w))


@pytest.mark.parametrize("k,n", [(5, 12), (16, 6)])  # K % 8 != 0, N % 4 != 0: torch's op
def test_linear_shapes_the_kernel_does_not_cover_fall_back(native, k, n):
    x, w = randn(3, k), randn(n, k)
    close(native.linear(x, w), REF.linear(x, w))


@pytest.mark.parametrize("m", [1, 3, 40])
def test_rms_norm_rope_and_silu_mul_match_torch(native, m):
    x, w = randn(m, 576, seed=m), randn(576, seed=2)
    close(native.rms_norm(x, w, 1e-5), REF.rms_norm(x, w, 1e-5))

    heads, dh = 12, 64  # rotate 12 of 15 heads, like q + k of a GQA model
    cos, sin = randn(100, dh, seed=3), randn(100, dh, seed=4)
    positions = torch.randint(0, 100, (m,), generator=torch.Generator().manual_seed(5))
    qkv = randn(m, 15 * dh, seed=6)
    a, b = qkv.clone(), qkv.clone()
    native.rope_(a, heads, dh, positions, cos, sin)
    REF.rope_(b, heads, dh, positions, cos, sin)
    close(a, b)
    assert torch.equal(a[:, heads * dh :], qkv[:, heads * dh :])  # v heads untouched

    gu = randn(m, 2 * 1536, seed=7) * 8  # wide range: both branches of the sigmoid
    close(native.silu_mul(gu), REF.silu_mul(gu))


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("decode_slots,decode_positions", [([0, 1, 2], [0, 9, 39]), ([4, 0, 2], [5, 17, 38])])
def test_attention_matches_sdpa_for_decode_and_prompt_rows(native, decode_slots, decode_positions, cache_dtype):
    """Decode rows for some slots plus a 6-token prompt chunk continuing at position 10 of slot 3."""
    KVH, G, Dh, S, cap = 3, 3, 64, 5, 40
    chunk = ChunkInput(slot=3, token_ids=[0] * 6, start=10)
    slots = decode_slots + [3] * 6
    positions = decode_positions + list(range(10, 16))
    R, D = len(slots), len(decode_slots)
    qkv = randn(R, (KVH * G + 2 * KVH) * Dh, seed=sum(positions))  # rows strided like the model's
    q = qkv[:, : KVH * G * Dh].view(R, KVH * G, Dh)
    k = qkv[:, KVH * G * Dh : (KVH * G + KVH) * Dh].view(R, KVH, Dh)
    v = qkv[:, (KVH * G + KVH) * Dh :].view(R, KVH, Dh)
    kc, vc = randn(S, KVH, cap, Dh, seed=8).to(cache_dtype), randn(S, KVH, cap, Dh, seed=9).to(cache_dtype)
    kc_ref, vc_ref = kc.float(), vc.float()

    step = StepLayout(
        num_slots=S,
        decode_slots=decode_slots,
        decode_tokens=[0] * D,
        decode_positions=decode_positions,
        chunks=[chunk],
        logit_rows=[],
        sampled=[],
        verified=[],
        prompt_scored=[],
    )
    cache = type("Cache", (), {"num_kv_heads": KVH, "capacity": cap})()
    expected = torch.cat(
        [
            _DecodeAttention(step, cache).run(q[:D], k[:D], v[:D], kc_ref, vc_ref),
            _chunk_attention(q[D:], k[D:], v[D:], kc_ref, vc_ref, chunk, _chunk_mask(chunk, G), G),
        ]
    )
    got = native.attention(q, k, v, kc, vc, torch.tensor(slots), torch.tensor(positions))
    # the reference ran on a float32 copy: same inputs, except this step's K/V, which the
    # float16 cache rounds when it stores them
    tol = dict(rtol=1e-4, atol=1e-5) if cache_dtype == torch.float32 else dict(rtol=1e-2, atol=2e-3)
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(kc, kc_ref.to(cache_dtype))  # this step's K/V written at each position
    torch.testing.assert_close(vc, vc_ref.to(cache_dtype))


def test_attention_row_is_the_same_in_one_chunk_or_many(native):
    """A prompt's rows give bit-identical results however the prompt was split into chunks."""
    KVH, G, Dh, cap, T = 3, 3, 64, 64, 48
    qkv = randn(T, (KVH * G + 2 * KVH) * Dh, seed=11)
    q = qkv[:, : KVH * G * Dh].view(T, KVH * G, Dh)
    k = qkv[:, KVH * G * Dh : (KVH * G + KVH) * Dh].view(T, KVH, Dh)
    v = qkv[:, (KVH * G + KVH) * Dh :].view(T, KVH, Dh)

    def run(splits: list[int]) -> torch.Tensor:
        kc, vc = torch.zeros(2, KVH, cap, Dh), torch.zeros(2, KVH, cap, Dh)
        outs, start = [], 0
        for end in [*splits, T]:
            rows = torch.arange(start, end)
            outs.append(
                native.attention(
                    q[start:end], k[start:end], v[start:end], kc, vc, torch.ones(end - start, dtype=torch.long), rows
                )
            )
            start = end
        return torch.cat(outs)

    whole = run([])
    assert torch.equal(run([16, 32]), whole) and torch.equal(run([1, 7, 40]), whole)


def _attend(q: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, G: int) -> torch.Tensor:
    """One row's attention over cached float keys/values [KVH, len, Dh], as torch computes it."""
    Dh = q.shape[-1]
    scores = torch.einsum("hgd,htd->hgt", q.view(kf.shape[0], G, Dh).double(), kf.double()) * Dh**-0.5
    return torch.einsum("hgt,htd->hgd", torch.softmax(scores, -1), vf.double()).reshape(-1).float()


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, torch.float8_e5m2])
def test_attention_over_many_key_blocks_is_the_same_alone_or_in_a_batch(native, cache_dtype):
    """Contexts of 1-3 blocks of 256 keys and a partial one. A lone decode row splits its blocks over
    both cores, a batch hands out whole rows: the same numbers either way, and torch's."""
    KVH, G, Dh, cap = 3, 3, 64, 1024
    positions = [255, 256, 700, 1023, 3, 511, 512, 900]
    R = len(positions)
    gen = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(R, n, Dh, generator=gen) for n in (KVH * G, KVH, KVH))
    kc = (torch.randn(R, KVH, cap, Dh, generator=gen) * 2).to(cache_dtype)
    vc = torch.randn(R, KVH, cap, Dh, generator=gen).to(cache_dtype)
    slots = torch.arange(R)
    batch = native.attention(q, k, v, kc.clone(), vc.clone(), slots, torch.tensor(positions))
    for r, pos in enumerate(positions):
        alone = native.attention(
            q[r : r + 1], k[r : r + 1], v[r : r + 1], kc, vc, slots[r : r + 1], torch.tensor([pos])
        )
        assert torch.equal(alone[0], batch[r]), f"row {r} at position {pos}"
        expected = _attend(q[r], kc[r, :, : pos + 1].float(), vc[r, :, : pos + 1].float(), G)
        torch.testing.assert_close(alone[0], expected, rtol=1e-4, atol=1e-5)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("ISVC_NATIVE_KERNELS", "0")
    with pytest.raises(kernels.KernelUnavailable, match="ISVC_NATIVE_KERNELS"):
        kernels.build()
    assert type(kernels.ops_for(torch.float32, 2, 64, 3)) is TorchOps


def test_only_float32_gets_the_native_ops(native):
    assert type(kernels.ops_for(torch.bfloat16, 2, 64, 3)) is TorchOps
    assert type(kernels.ops_for(torch.float32, 2, 64, 3)) is NativeOps


def test_build_is_cached(tmp_path, monkeypatch, native):
    monkeypatch.setenv("ISVC_CACHE_DIR", str(tmp_path))
    first = kernels.build()
    assert first.parent == tmp_path / "kernels"
    mtime = first.stat().st_mtime_ns
    assert kernels.build() == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp files left behind
