"""Tiny random encoder models (BERT, DistilBERT, XLM-RoBERTa) saved as HF folders in about a second.

Each builder writes a folder ``AutoModel*``/``AutoTokenizer`` load as-is: a WordPiece (or, for
XLM-RoBERTa, ``<s>``/``</s>``-style) fast tokenizer trained on a small corpus, and a 2-layer
model with hidden size 32. Test modules import the session fixtures by name::

    from tests.encoder_fixtures import tiny_embedding_dir, tiny_classifier_dir  # noqa: F401
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world! How are you today? I am fine, thank you.",
    "Embeddings map sentences to vectors; similar sentences get similar vectors.",
    "A cross encoder reads the query and the document together and scores them.",
    "George Washington lived in Virginia and worked in New York City.",
    "The movie was great, the acting was terrible, the music was fine.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?",
] * 10

# (pad, unk, cls, sep, mask), and the vocabulary's first ids in that order
BERT_SPECIALS = (("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
XLMR_SPECIALS = (("<pad>", "<unk>", "<s>", "</s>", "<mask>"), ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])  # pad id 1
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
SENTIMENT_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
MAX_POSITIONS = 128


def _tokenizer(specials: tuple[tuple[str, ...], list[str]], token_types: bool) -> Any:
    """A WordPiece fast tokenizer with BERT's (or XLM-R's) special-token template; ``token_types``:
    it returns token_type_ids (BERT does, DistilBERT and RoBERTa do not)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    (pad, unk, cls, sep, mask), vocab_head = specials
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=vocab_head))
    cls_id, sep_id = tok.token_to_id(cls), tok.token_to_id(sep)
    if cls == "[CLS]":  # BERT: [CLS] A [SEP] B [SEP], segment ids 0 then 1
        pair = f"{cls} $A:0 {sep}:0 $B:1 {sep}:1"
    else:  # RoBERTa: <s> A </s> </s> B </s>, one segment
        pair = f"{cls} $A:0 {sep}:0 {sep}:0 $B:0 {sep}:0"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A:0 {sep}:0", pair=pair, special_tokens=[(cls, cls_id), (sep, sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        bos_token=cls if cls != "[CLS]" else None,
        eos_token=sep if cls != "[CLS]" else None,
        model_max_length=MAX_POSITIONS,
        model_input_names=["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else []),
    )


def _config(arch: str, vocab_size: int, **extra: Any) -> Any:
    from transformers import BertConfig, DistilBertConfig, XLMRobertaConfig

    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab_size, dim=32, hidden_dim=64, n_layers=2, n_heads=2,
            max_position_embeddings=MAX_POSITIONS, pad_token_id=0, **extra,
        )  # fmt: skip
    common = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, initializer_range=0.2, **extra,
    )  # fmt: skip
    if arch == "xlm-roberta":  # positions start after the pad id (2 extra rows), one segment
        return XLMRobertaConfig(
            max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, **common,
        )  # fmt: skip
    return BertConfig(max_position_embeddings=MAX_POSITIONS, pad_token_id=0, **common)


_CLASSES = {
    ("bert", "base"): "BertModel",
    ("bert", "seq"): "BertForSequenceClassification",
    ("bert", "token"): "BertForTokenClassification",
    ("bert", "mlm"): "BertForMaskedLM",
    ("distilbert", "base"): "DistilBertModel",
    ("distilbert", "seq"): "DistilBertForSequenceClassification",
    ("distilbert", "token"): "DistilBertForTokenClassification",
    ("distilbert", "mlm"): "DistilBertForMaskedLM",
    ("xlm-roberta", "base"): "XLMRobertaModel",
    ("xlm-roberta", "seq"): "XLMRobertaForSequenceClassification",
    ("xlm-roberta", "token"): "XLMRobertaForTokenClassification",
    ("xlm-roberta", "mlm"): "XLMRobertaForMaskedLM",
}


def build_tiny_encoder(
    path: Path, head: str = "base", arch: str = "bert", id2label: dict[int, str] | None = None, seed: int = 0
) -> Path:
    """Save a tiny random ``arch`` model with ``head`` (base, seq, token, mlm) and its tokenizer."""
    import torch
    import transformers

    specials = XLMR_SPECIALS if arch == "xlm-roberta" else BERT_SPECIALS
    tokenizer = _tokenizer(specials, token_types=arch == "bert")
    extra: dict[str, Any] = {}
    if id2label is not None:
        extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config = _config(arch, len(tokenizer), **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, _CLASSES[(arch, head)])(config).eval()
    return save_folder(path, tokenizer, model)


def save_folder(path: Path, tokenizer: Any, model: Any) -> Path:
    """A model folder as transformers writes one: tokenizer files, config.json, model.safetensors."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def build_sentence_transformer(
    path: Path, arch: str = "bert", pooling: str = "mean", normalize: bool = True, max_seq_length: int = 64
) -> Path:
    """A sentence-transformers folder: the base model + ``modules.json``, ``1_Pooling``, ``2_Normalize``."""
    build_tiny_encoder(path, "base", arch)
    modes = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
             "max": "pooling_mode_max_tokens", "lasttoken": "pooling_mode_lasttoken"}  # fmt: skip
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {"word_embedding_dimension": 32, **dict.fromkeys(modes.values(), False)}
    pooling_config[modes[pooling]] = True
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    return path


@pytest.fixture(scope="session")
def tiny_embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BERT sentence-transformers folder: mean pooling, normalized, max_seq_length 64."""
    return build_sentence_transformer(tmp_path_factory.mktemp("tiny-embedding"))


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BertForSequenceClassification with 3 labels (negative, neutral, positive)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-classifier"), "seq", id2label=SENTIMENT_LABELS)


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BertForSequenceClassification with one label: a cross-encoder (rerank)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"), "seq", id2label={0: "LABEL_0"})


@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BertForTokenClassification with NER labels (O, B-PER, I-PER, B-LOC, I-LOC)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-ner"), "token", id2label=NER_LABELS)


@pytest.fixture(scope="session")
def tiny_fill_mask_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BertForMaskedLM (mask token ``[MASK]``)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-fill-mask"), "mlm")


@pytest.fixture(scope="session")
def tiny_distilbert_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DistilBertForSequenceClassification with 3 labels (DistilBERT takes no token_type_ids)."""
    return build_tiny_encoder(
        tmp_path_factory.mktemp("tiny-distilbert"), "seq", arch="distilbert", id2label=SENTIMENT_LABELS
    )


@pytest.fixture(scope="session")
def tiny_xlmr_embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XLM-RoBERTa sentence-transformers folder (the bge-m3 / e5 family shape): cls pooling, normalized."""
    return build_sentence_transformer(tmp_path_factory.mktemp("tiny-xlmr-embedding"), arch="xlm-roberta", pooling="cls")


@pytest.fixture(scope="session")
def tiny_xlmr_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XLMRobertaForSequenceClassification with one label (the bge-reranker shape)."""
    return build_tiny_encoder(
        tmp_path_factory.mktemp("tiny-xlmr-cross-encoder"), "seq", arch="xlm-roberta", id2label={0: "LABEL_0"}
    )
