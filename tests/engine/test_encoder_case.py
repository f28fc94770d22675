"""KServe's --disable_lower_case: an uncased tokenizer keeps the text's case when asked."""

from __future__ import annotations

from pathlib import Path

from isvc.engine.config import EngineConfig
from isvc.engine.encoder.engine import keep_case, load_tokenizer
from isvc.engine.factory import build_engine
from isvc.runtime_args import parse
from tests.encoder_fixtures import *  # noqa: F403


def test_keep_case_turns_off_the_normalizers_lower_casing(tiny_embedding_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_embedding_dir)
    assert tokenizer.backend_tokenizer.normalizer.normalize_str("Hello WORLD") == "hello world"
    keep_case(tokenizer)
    assert tokenizer.backend_tokenizer.normalizer.normalize_str("Hello WORLD") == "Hello WORLD"


def test_disable_lower_case_reaches_the_encoder_engine(tiny_embedding_dir: Path) -> None:
    args = parse([f"--model_dir={tiny_embedding_dir}", "--disable_lower_case"])
    engine = build_engine(EngineConfig(model_dir=str(tiny_embedding_dir), keep_case=args.disable_lower_case))
    engine.load()
    try:
        lower = engine.tokenizer("hello world")["input_ids"]
        upper = engine.tokenizer("HELLO WORLD")["input_ids"]
        assert lower != upper  # without the flag both are the same ids (the default test below)
    finally:
        engine.shutdown()
    default = build_engine(EngineConfig(model_dir=str(tiny_embedding_dir)))
    default.load()
    try:
        assert default.tokenizer("hello world")["input_ids"] == default.tokenizer("HELLO WORLD")["input_ids"]
    finally:
        default.shutdown()
