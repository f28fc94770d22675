"""The perplexity bench measures what transformers measures: exp(mean next-token loss) over each window."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.perplexity import perplexity, windows
from isvc.engine.core import load_tokenizer
from isvc.engine.llama import LlamaModel


def test_perplexity_equals_transformers_loss_on_the_same_windows(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    texts = windows(load_tokenizer(str(tiny_model_dir)), 3, 40)
    assert len(texts) == 3 and all(len(t) == 40 for t in texts) and len({tuple(t) for t in texts}) == 3
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        losses = [hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item() for ids in texts]
    expected = math.exp(sum(losses) / len(losses))  # equal window lengths: the mean of means is the mean
    got = perplexity(LlamaModel(tiny_model_dir, torch.float32, None, kv_cache_dtype="float32"), texts)
    assert math.isclose(got, expected, rel_tol=1e-4)
