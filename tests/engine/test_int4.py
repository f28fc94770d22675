"""4-bit grouped weights (GPTQ/AWQ checkpoints): the kernel against its definition, row-independent,
the same bits on AVX2 and AVX-512 tiles, and the packing round trip."""

from __future__ import annotations

import pytest
import torch

from isvc.engine import kernels
from isvc.engine.kernels.int4 import _torch_int4, dequantize_int4, int4_linear, pack_int4, unpack_values
from isvc.engine.kernels.int8 import quantize_rows


def random_weight(n: int, k: int, group: int, seed: int = 0, act_order: bool = False):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    groups = -(-k // group)
    q = torch.randint(0, 16, (n, k), generator=gen)
    scale = torch.rand(n, groups, generator=gen) * 0.02
    zero = torch.randint(0, 16, (n, groups), generator=gen).float()
    perm = torch.randperm(k, generator=gen) if act_order else None
    return q, scale, zero, pack_int4(q, scale, zero, group, perm)


def definition(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """Integer activations times (q - zero) per group, summed exactly, scaled per group and per row."""
    xq, xs = quantize_rows(x)
    group_of = torch.arange(q.shape[1]) // group
    w = (q.double() - zero.double()[:, group_of]) * scale.double()[:, group_of]
    return (xq.double() @ w.t() * xs.double()).float()


@pytest.fixture(scope="module")
def native() -> None:
    if kernels.load() is None:
        pytest.skip("native kernels unavailable here")


@pytest.mark.parametrize("portable", [False, True], ids=["this-cpu", "avx2-tiles"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 9, 33])
@pytest.mark.parametrize("n,k,group", [(1536, 576, 128), (576, 1536, 128), (64, 576, 64), (20, 64, 32)])
def test_the_kernel_equals_its_definition(native: None, portable: bool, m: int, n: int, k: int, group: int) -> None:
    q, scale, zero, w = random_weight(n, k, group)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    got = int4_linear(x, w, portable=portable)
    want = definition(x, q, scale, zero, group)
    assert got.shape == (m, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(_torch_int4(x, w), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_rows_are_independent_and_tiles_agree_to_the_bit(native: None) -> None:
    _, _, _, w = random_weight(1536, 576, 128)
    x = torch.randn(13, 576)
    batch = int4_linear(x, w)
    alone = torch.cat([int4_linear(x[i : i + 1], w) for i in range(13)])
    assert torch.equal(batch, alone)
    assert torch.equal(batch, int4_linear(x, w, portable=True))


def test_the_residual_add_and_bias_paths(native: None) -> None:
    _, _, _, w = random_weight(64, 128, 32)
    x, out = torch.randn(3, 128), torch.randn(3, 64)
    expected = out + int4_linear(x, w)
    assert torch.equal(int4_linear(x, w, out=out.clone()), expected)
    bias = torch.randn(64)
    assert torch.equal(int4_linear(x, w, bias), int4_linear(x, w) + bias)


def test_act_order_permutes_the_inputs_once(native: None) -> None:
    """Groups of scattered inputs: the weight is kept in group order, and each call gathers x to match."""
    q, scale, zero, w = random_weight(32, 128, 32, act_order=True)
    assert w.perm is not None
    x = torch.randn(2, 128)
    expected = definition(x[:, w.perm], q, scale, zero, 32)
    torch.testing.assert_close(int4_linear(x, w), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    dense = dequantize_int4(w)  # in the model's input order
    torch.testing.assert_close(x @ dense.t(), expected, rtol=0.02, atol=0.02 * float(expected.abs().max()))


def test_packing_round_trips_and_pads_rows() -> None:
    q, _, _, w = random_weight(20, 64, 32)
    assert w.q.shape == (24, 32) and w.out_features == 20  # rows padded to the kernel's 8
    assert torch.equal(unpack_values(w), q.to(torch.uint8))
    with pytest.raises(ValueError, match="multiples of 32"):
        pack_int4(torch.zeros(8, 48, dtype=torch.long), torch.ones(8, 3), torch.zeros(8, 3), 16)


def test_the_torch_path_equals_the_definition_with_or_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference the kernel is held to, and what int4_linear runs where the kernel cannot build."""
    import isvc.engine.kernels.int4 as int4

    q, scale, zero, w = random_weight(24, 64, 32, act_order=True)
    x, out, bias = torch.randn(3, 64), torch.randn(3, 24), torch.randn(24)
    expected = definition(x[:, w.perm], q, scale, zero, 32)
    monkeypatch.setattr(int4, "_native", lambda: None)
    torch.testing.assert_close(int4_linear(x, w), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    torch.testing.assert_close(int4_linear(x, w, bias), expected + bias, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(int4_linear(x, w, out=out.clone()), out + expected, rtol=1e-5, atol=1e-4)
    assert not int4.native_available()
