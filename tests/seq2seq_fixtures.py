"""Tiny random encoder-decoder models (T5, BART) saved as HF folders in about a second.

Each folder loads with ``AutoModelForSeq2SeqLM``/``AutoTokenizer`` as a real checkpoint does: a
SentencePiece-style (``▁`` word marks) BPE fast tokenizer that closes every input with
``</s>``, as T5's does, and a 2-layer model with width 32. Weights are drawn wide enough that
greedy outputs vary from prompt to prompt (a narrow random model repeats one token). Test
modules import the session fixtures by name::

    from tests.seq2seq_fixtures import tiny_t5_dir  # noqa: F401
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.encoder_fixtures import CORPUS, save_folder

MAX_POSITIONS = 128


def _tokenizer(specials: list[str], eos: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # Unigram's trainer orders its vocabulary differently per run
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=160, special_tokens=specials))
    eos_id = tok.token_to_id(eos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token=eos, unk_token="<unk>", model_max_length=MAX_POSITIONS
    )


def build_tiny_t5(path: Path, seed: int = 2) -> Path:
    """T5ForConditionalGeneration (relative positions, decoder starts at <pad> = 0, </s> = 1 ends). Seed 2
    draws weights whose greedy outputs end at EOS for some prompts (seeds 0 and 1 never emit it)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _tokenizer(["<pad>", "</s>", "<unk>"], "</s>")
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, initializer_factor=4.0,
        n_positions=MAX_POSITIONS,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    return save_folder(path, tokenizer, model)


def build_tiny_bart(path: Path, seed: int = 5) -> Path:
    """BartForConditionalGeneration (learned positions, decoder starts at </s> = 2). Seed 5 draws
    weights whose greedy outputs end at EOS for some prompts (seeds 0-4 never emit it)."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = _tokenizer(["<s>", "<pad>", "</s>", "<unk>"], "</s>")
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
        init_std=0.5,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(config).eval()
    return save_folder(path, tokenizer, model)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bart(tmp_path_factory.mktemp("tiny-bart"))
