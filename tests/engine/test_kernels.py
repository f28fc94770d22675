"""The native kernels against the torch ops they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from isvc.engine import kernels


@pytest.fixture(scope="module")
def linear():
    try:
        kernels.build("linear_avx2.c")
    except kernels.KernelUnavailable as exc:
        pytest.skip(f"native kernel unavailable here: {exc}")
    return kernels.native_linear(num_threads=2)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 32, 67])
@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (44, 64), (8, 8)])
def test_native_linear_matches_torch(linear, m, n, k):
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen)
    torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4)


def test_native_linear_reads_strided_input(linear):
    x = torch.randn(6, 128)[:, :64]  # a column slice: not contiguous
    w = torch.randn(16, 64)
    torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 12), (16, 6)])  # K % 8 != 0, N % 4 != 0: torch's op
def test_shapes_the_kernel_does_not_cover_fall_back(linear, shape):
    k, n = shape
    x, w = torch.randn(3, k), torch.randn(n, k)
    torch.testing.assert_close(linear(x, w), F.linear(x, w))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("ISVC_NATIVE_KERNELS", "0")
    with pytest.raises(kernels.KernelUnavailable, match="ISVC_NATIVE_KERNELS"):
        kernels.build("linear_avx2.c")
    assert kernels.native_linear(2) is F.linear


def test_build_is_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("ISVC_CACHE_DIR", str(tmp_path))
    try:
        first = kernels.build("linear_avx2.c")
    except kernels.KernelUnavailable as exc:
        pytest.skip(str(exc))
    assert first.parent == tmp_path / "kernels"
    mtime = first.stat().st_mtime_ns
    assert kernels.build("linear_avx2.c") == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp files left behind


@pytest.mark.parametrize("slots,positions", [([0, 1, 2], [0, 9, 39]), ([4, 0, 2], [5, 17, 38])])
def test_native_decode_attention_matches_sdpa(slots, positions):
    from isvc.engine.llama import StepInput, _DecodeAttention

    KVH, G, Dh, S, cap = 3, 3, 64, 5, 40
    native = kernels.native_decode_attention(2, KVH, Dh, G)
    if native is None:
        pytest.skip("native kernel unavailable here")
    gen = torch.Generator().manual_seed(sum(positions))
    D = len(slots)
    qkv = torch.randn(D, (KVH * G + 2 * KVH) * Dh, generator=gen)  # rows strided like the model's
    q = qkv[:, : KVH * G * Dh].view(D, KVH * G, Dh)
    k = qkv[:, KVH * G * Dh : (KVH * G + KVH) * Dh].view(D, KVH, Dh)
    v = qkv[:, (KVH * G + KVH) * Dh :].view(D, KVH, Dh)
    kc, vc = torch.randn(S, KVH, cap, Dh, generator=gen), torch.randn(S, KVH, cap, Dh, generator=gen)
    step = StepInput(num_slots=S, decode_slots=slots, decode_tokens=[0] * D, decode_positions=positions,
                     chunks=[])
    kc_ref, vc_ref = kc.clone(), vc.clone()
    cache = type("Cache", (), {"num_kv_heads": KVH, "capacity": cap})()
    expected = _DecodeAttention(step, cache, None).run(q, k, v, kc_ref, vc_ref)
    got = _DecodeAttention(step, cache, native).run(q, k, v, kc, vc)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kc, kc_ref)  # this step's K/V written at each request's position
    torch.testing.assert_close(vc, vc_ref)
