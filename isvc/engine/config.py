"""EngineConfig: every knob of the engine, with bounds and a docstring each."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KV_CACHE_DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "half", "fp8_e5m2")
KVCacheDtype = Literal["auto", "float32", "fp32", "float16", "fp16", "half", "fp8_e5m2"]
QUANTIZATIONS = ("int8", "gptq", "awq")
Quantization = Literal["int8", "gptq", "awq"]


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    model_dir: str
    """Local HuggingFace model folder (config.json, safetensors, tokenizer)."""

    task: str | None = Field(default=None, max_length=64)
    """KServe's task name (``--task``: text_generation, text_embedding, rerank, fill_mask, ...);
    None infers it from config.json's architectures. Picks the generative or the encoder engine."""

    dtype: str = "float32"
    """Weight and activation dtype: float32 (default on CPU), bfloat16 or float16."""

    quantization: Quantization | None = None
    """Generative engine: ``int8`` quantizes a float32 model's linear weights at load (per output
    channel) and each step's activations (per token), and multiplies in integers
    (kernels/int8.py). ``gptq`` / ``awq`` load a checkpoint of that method (quantized.py; detected
    from config.json's ``quantization_config`` without the flag, as vLLM does). None serves a
    float checkpoint's weights as they are."""

    max_model_len: int | None = Field(default=None, ge=16)
    """Prompt + output token cap; defaults to the model's max_position_embeddings."""

    max_num_seqs: int = Field(default=32, ge=1, le=1024)
    """Most requests decoded together in one step (vLLM's flag name); for the encoder engine, the
    most inputs in one forward pass."""

    max_num_batched_tokens: int = Field(default=256, ge=16)
    """Token budget per step: decode tokens plus prefill chunk tokens (vLLM's flag name)."""

    max_batch_tokens: int = Field(default=512, ge=16, le=1 << 20)
    """Encoder engine: padded tokens per forward pass (rows x longest input in the batch); concurrent
    inputs of similar length share a forward up to it and ``max_num_seqs`` rows. An input longer
    than the budget runs alone. Small on purpose: each worker computes on one core, where a batch
    whose activations stay in its cache runs fastest, and short batches answer sooner, so clients
    send their next request while the workers still have work (all-MiniLM-L6-v2, 64 clients over
    HTTP on 2 cores: 256 -> 111, 512 -> 121, 768 -> 105, 8192 -> 97 docs/s, means of 2-4 runs)."""

    max_queue: int | None = Field(default=None, ge=0)
    """Requests allowed to wait for the engine; beyond it new requests get 429/503. None: 256
    generations (each holds a batch slot for seconds), or 4096 encoder inputs (a rerank of 16
    documents is 16 inputs, each a few milliseconds of work)."""

    kv_cache_dtype: KVCacheDtype = "auto"
    """KV cache element type. auto: float16 where the native attention kernel runs (half the
    memory and half the bytes read per step, like llama.cpp's default f16 cache), otherwise
    the model dtype. float32 keeps the cache at full precision. fp8_e5m2 (vLLM's name): a quarter
    of float32, each value rounded to float16's top byte, so a long context's step reads half the
    cache bytes of float16 (native attention only)."""

    kv_cache_space_gb: float = Field(default=4.0, gt=0)
    """Upper bound of the KV cache in GiB (like VLLM_CPU_KVCACHE_SPACE)."""

    enable_prefix_caching: bool = True
    """Reuse the KV of recent prompts for new prompts that start the same way (vLLM's flag)."""

    prefix_cache_space_gb: float = Field(default=0.0625, ge=0)
    """Bytes kept for reused prompt prefixes, in GiB (evicted least recently used)."""

    num_speculative_tokens: int = Field(default=3, ge=0, le=8)
    """Tokens drafted per step by prompt lookup (n-gram) and verified in the same step, for
    greedy requests; 0 turns speculation off. Outputs are unchanged either way."""

    speculative_max_batch: int = Field(default=1, ge=1)
    """Speculate only while at most this many requests decode: larger steps are compute-bound,
    and rejected drafts would cost real time there."""

    num_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads; defaults to the cores this process may use."""

    trust_remote_code: bool = False
    """Allow custom model code from the model folder."""

    seed: int = 0
    """Seed for requests that give none."""

    keep_case: bool = False
    """Encoder tasks: feed the text's own case even when the tokenizer lower-cases (an uncased
    model's normalizer); KServe's ``--disable_lower_case``. Off: the tokenizer's own choice."""

    served_model_name: str | None = None
    """The name clients use for the model: the ``model_name`` label of the vllm:* metrics
    (vLLM's flag name); defaults to the model folder's name."""
