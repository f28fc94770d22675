"""GPTQ and AWQ checkpoints (``--quantization gptq`` / ``awq``): their packed weights read back exactly.

Each test packs a tiny random Llama's linears the way the format's writers do (tests/quant_fixtures.py,
bit by bit, independently of the engine's vectorized unpacking). The engine must load exactly the weights the checkpoint stands for, ``scale * (q - zero)`` of a float
folder: as 4-bit kernel weights that dequantize to them bit for bit, or, where a fused q/k/v
cannot share one 4-bit layout (act orders that differ), as their int8 form.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from isvc.engine.errors import UnsupportedModel
from isvc.engine.kernels.int4 import Int4Weight, dequantize_int4
from isvc.engine.kernels.int8 import Int8Weight, dequantize, quantize_weight
from isvc.engine.llama import LlamaModel
from tests.quant_fixtures import quantized_folders


def _load(folder: Path, quantization: str | None) -> LlamaModel:
    return LlamaModel(folder, torch.float32, None, quantization=quantization)


@pytest.mark.parametrize(
    ("method", "fmt", "desc_act"),
    [("gptq", "gptq", False), ("gptq", "gptq", True), ("gptq", "gptq_v2", False), ("awq", "gemm", False)],
    ids=["gptq", "gptq-desc-act", "gptq-v2-asym", "awq"],
)
def test_a_checkpoint_loads_the_weights_it_stands_for(
    tiny_model_dir: Path, tmp_path: Path, method: str, fmt: str, desc_act: bool
) -> None:
    folders = quantized_folders(tiny_model_dir, tmp_path, method, fmt, desc_act)
    model = _load(folders / "q", None)  # detected from quantization_config, as vLLM does
    assert model.quantization == method
    reference = _load(folders / "ref", None)
    kinds = set()
    for got, want in zip(model.layers, reference.layers):
        for name in ("wqkv", "wo", "wgu", "wd"):
            a, b = getattr(got, name), getattr(want, name)
            kinds.add(type(a).__name__)
            if isinstance(a, Int4Weight):
                assert torch.equal(dequantize_int4(a), b), name
            else:
                assert isinstance(a, Int8Weight), name
                expected = quantize_weight(b)
                assert torch.equal(a.q, expected.q) and torch.equal(a.scale, expected.scale), name
    # every linear is 4-bit unless a fused one's parts were quantized in different act orders
    assert kinds == ({"Int4Weight", "Int8Weight"} if desc_act else {"Int4Weight"})
    assert _load(folders / "q", method).quantization == method  # the flag, when given, names it


def test_an_8_bit_gptq_checkpoint_loads_as_int8(tiny_model_dir: Path, tmp_path: Path) -> None:
    """8-bit groups have no 4-bit kernel: they are unpacked and served as per-channel int8."""
    folders = quantized_folders(tiny_model_dir, tmp_path, "gptq", "gptq_v2", False, bits=8)
    model = _load(folders / "q", None)
    reference = _load(folders / "ref", None)
    for got, want in zip(model.layers, reference.layers):
        for name in ("wqkv", "wo", "wgu", "wd"):
            a, expected = getattr(got, name), quantize_weight(getattr(want, name))
            assert isinstance(a, Int8Weight) and torch.equal(a.q, expected.q) and torch.equal(a.scale, expected.scale)


def test_the_flag_must_name_the_checkpoints_method(tiny_model_dir: Path, tmp_path: Path) -> None:
    folders = quantized_folders(tiny_model_dir, tmp_path, "gptq", "gptq", False)
    with pytest.raises(UnsupportedModel, match="quantization_config names gptq, but --quantization says awq"):
        _load(folders / "q", "awq")
    with pytest.raises(UnsupportedModel, match="has no quantization_config"):
        _load(tiny_model_dir, "gptq")
    config = json.loads((folders / "q" / "config.json").read_text())
    config["quantization_config"]["quant_method"] = "bitsandbytes"
    (folders / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="'bitsandbytes' is not loaded by isvc's CPU engine"):
        _load(folders / "q", None)


def test_a_quantized_output_head_is_the_checkpoints_own(tiny_model_dir: Path, tmp_path: Path) -> None:
    """GPTQModel's lm_head=True: an untied head stored as qweight/qzeros/scales, not the embedding."""
    folders = quantized_folders(tiny_model_dir, tmp_path, "gptq", "gptq", False, quantized_head=True)
    model, reference = _load(folders / "q", None), _load(folders / "ref", None)
    assert isinstance(model.lm_head, Int4Weight)
    assert torch.equal(dequantize_int4(model.lm_head), reference.lm_head)


def test_an_older_quantize_config_json_is_read(tiny_model_dir: Path, tmp_path: Path) -> None:
    """AutoGPTQ's folders keep the settings in quantize_config.json beside config.json, as vLLM reads them."""
    folders = quantized_folders(tiny_model_dir, tmp_path, "gptq", "gptq", False)
    config = json.loads((folders / "q" / "config.json").read_text())
    settings = config.pop("quantization_config")
    settings.pop("quant_method")
    (folders / "q" / "config.json").write_text(json.dumps(config))
    (folders / "q" / "quantize_config.json").write_text(json.dumps(settings))
    assert _load(folders / "q", "gptq").quantization == "gptq"


def test_without_the_native_kernel_4_bit_weights_are_served_as_int8(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host without AVX2 or a compiler: the torch path of the 4-bit kernel is a reference, too slow
    to serve, so the checkpoint's weights become per-channel int8 of exactly what they stand for."""
    import isvc.engine.quantized

    monkeypatch.setattr(isvc.engine.quantized, "native_available", lambda: False)
    folders = quantized_folders(tiny_model_dir, tmp_path, "awq", "gemm", False)
    model, reference = _load(folders / "q", None), _load(folders / "ref", None)
    for got, want in zip(model.layers, reference.layers):
        expected = quantize_weight(want.wqkv)
        assert isinstance(got.wqkv, Int8Weight) and torch.equal(got.wqkv.q, expected.q)


def test_scales_that_do_not_match_the_groups_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folders = quantized_folders(tiny_model_dir, tmp_path, "awq", "gemm", False)
    config = json.loads((folders / "q" / "config.json").read_text())
    config["quantization_config"]["group_size"] = 64  # the weights were quantized in groups of 32
    (folders / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="does quantization_config's group_size match"):
        _load(folders / "q", None)


def test_the_4_bit_model_follows_the_float_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A forward through the 4-bit kernel (10-bit activations) against the float weights it stands for."""
    from isvc.engine.step import ChunkInput, StepLayout

    folders = quantized_folders(tiny_model_dir, tmp_path, "gptq", "gptq", True)
    ids = list(range(3, 40))

    def logits(model: LlamaModel) -> torch.Tensor:
        cache = model.new_cache(1, 1 << 24)
        cache.ensure(1, len(ids))
        step = StepLayout(1, [], [], [], [ChunkInput(0, ids, 0)], list(range(len(ids))), [], [], [])
        return model.forward(step, cache)

    quantized, reference = _load(folders / "q", None), _load(folders / "ref", None)
    # the embedding (and tied head) of a quantized model is int8 per row: the reference gets the same table
    assert isinstance(quantized.embed, Int8Weight) and quantized.lm_head is quantized.embed
    reference.embed = reference.lm_head = dequantize(quantized.embed)
    got, want = logits(quantized), logits(reference)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=1)
    assert cosine.min() > 0.99, cosine
