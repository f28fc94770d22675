"""The encoder engine: BERT-family models for embeddings, rerank, classification, NER and fill-mask."""

from isvc.engine.encoder.engine import AsyncEncoderEngine

__all__ = ["AsyncEncoderEngine"]
