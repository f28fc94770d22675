"""A lean forward pass for Llama-family decoders (Llama, Mistral, Qwen2, SmolLM) on the slot KV cache.

Why not the transformers module: for a model this small, a step is bound by per-op
overhead, not FLOPs. Fusing q/k/v and gate/up into single matmuls, running all rows
of a step (decode tokens and prefill chunks) through each linear layer at once, and
reading the cache in place keeps the op count per layer near the minimum.

Shapes: N rows in a step (D decode tokens, then the prefill chunks' tokens);
H query heads, KVH key/value heads, G = H // KVH, Dh head dim.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from isvc.engine.errors import UnsupportedModel
from isvc.engine.kernels import TorchOps, ops_for
from isvc.engine.kernels.int4 import Int4Weight
from isvc.engine.kernels.int8 import Int8Weight, embedding, quantize_weight
from isvc.engine.kernels.ops import Weight
from isvc.engine.kv_cache import KVCache
from isvc.engine.quantized import METHODS, QuantizedCheckpoint, read_linear, read_quantization_config, to_int4
from isvc.engine.step import ChunkInput, StepLayout

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}


@dataclass(slots=True)
class _Layer:
    ln1: torch.Tensor
    wqkv: Weight
    bqkv: torch.Tensor | None
    wo: Weight
    ln2: torch.Tensor
    wgu: Weight
    wd: Weight


class LlamaModel:
    def __init__(
        self,
        model_dir: Path,
        dtype: torch.dtype,
        max_model_len: int | None,
        kv_cache_dtype: str = "auto",
        quantization: str | None = None,
    ) -> None:
        self.config = json.loads((model_dir / "config.json").read_text())
        arch = (self.config.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModel(
                f"architecture {arch} is not supported by isvc's CPU engine "
                f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}); try --backend vllm"
            )
        c = self.config
        self.dtype = dtype
        self.hidden = c["hidden_size"]
        self.num_heads = c["num_attention_heads"]
        self.num_kv_heads = c.get("num_key_value_heads") or self.num_heads
        self.head_dim = c.get("head_dim") or self.hidden // self.num_heads
        self.group = self.num_heads // self.num_kv_heads
        self.num_layers = c["num_hidden_layers"]
        self.eps = float(c.get("rms_norm_eps", 1e-6))
        self.vocab_size = c["vocab_size"]
        self.max_position = c.get("max_position_embeddings", 2048)
        self.max_model_len = max_model_len or self.max_position
        # Every op of the step goes through this: the native kernels for float32 where they build.
        self.ops: TorchOps = ops_for(dtype, torch.get_num_threads(), self.head_dim, self.group)
        self.kv_dtype = self._kv_dtype(kv_cache_dtype)
        logger.info("step ops: %s, KV cache %s", self.ops.name, str(self.kv_dtype).removeprefix("torch."))
        self.checkpoint = read_quantization_config(c, model_dir)
        self.quantization = _quantization(quantization, self.checkpoint)
        if self.quantization is not None and dtype != torch.float32:
            dtype_name = str(dtype).removeprefix("torch.")
            raise UnsupportedModel(
                f"{self._quantized_by} computes in float32 on isvc's CPU engine; drop --dtype {dtype_name}"
            )
        self._load_weights(model_dir)
        self._build_rope(max(self.max_model_len, 16))

    # -- loading -------------------------------------------------------------------------

    def _load_weights(self, model_dir: Path) -> None:
        from safetensors.torch import load

        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise UnsupportedModel(f"no *.safetensors weights in {model_dir}")
        w: dict[str, torch.Tensor] = {}
        for f in files:
            # Read into owned memory rather than mapping the file: a mapping keeps every page
            # it ever touched (the q/k/v and gate/up originals we fuse below) in RSS as well.
            w.update(load(f.read_bytes()))
        w = {k.removeprefix("model."): v for k, v in w.items()}

        def take(name: str) -> torch.Tensor:
            # A copy, so that no kept tensor pins the whole file buffer it was read into.
            return w.pop(name).to(self.dtype, copy=True).contiguous()

        def linear(*names: str) -> Weight:
            """The weight of one linear, or of several stacked (q, k, v): float as stored, or from a
            GPTQ/AWQ checkpoint, as 4-bit for linear_int4.c where it can be, else unpacked to float."""
            if self.checkpoint is None or all(name + ".qweight" not in w for name in names):
                # a float checkpoint, or linears a quantized one kept float (modules_to_not_convert)
                parts = [take(name + ".weight") for name in names]
                return parts[0] if len(parts) == 1 else torch.cat(parts).contiguous()
            grouped = [read_linear(self.checkpoint, lambda key: w.pop(key, None), name) for name in names]
            packed = to_int4(grouped, self.checkpoint)
            return packed if packed is not None else torch.cat([g.dequantize() for g in grouped]).contiguous()

        self.embed: torch.Tensor | Int8Weight = take("embed_tokens.weight")  # [V, hidden]
        self.norm = take("norm.weight")
        head = w.pop("lm_head.weight", None)
        self.lm_head: Weight
        if "lm_head.qweight" in w:  # a checkpoint that quantized its output head too (GPTQModel's lm_head=True)
            self.lm_head = linear("lm_head")
        elif head is not None and not self.config.get("tie_word_embeddings"):
            self.lm_head = head.to(self.dtype)
        elif head is None and self.config.get("tie_word_embeddings") is False:
            raise UnsupportedModel("the checkpoint has no lm_head weights and does not tie them to its embeddings")
        else:
            self.lm_head = self.embed
        self.layers: list[_Layer] = []
        for i in range(self.num_layers):
            p = f"layers.{i}."
            bias = None
            if p + "self_attn.q_proj.bias" in w:
                bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
            layer = _Layer(
                ln1=take(p + "input_layernorm.weight"),
                wqkv=linear(*(p + f"self_attn.{n}_proj" for n in "qkv")),
                bqkv=bias,
                wo=linear(p + "self_attn.o_proj"),
                ln2=take(p + "post_attention_layernorm.weight"),
                wgu=linear(p + "mlp.gate_proj", p + "mlp.up_proj"),
                wd=linear(p + "mlp.down_proj"),
            )
            if self.quantization is not None:  # layer by layer: the float weights of one layer at a time
                self._to_int8(layer)
            self.layers.append(layer)
        if self.quantization is not None:
            # The embedding table as int8 per row too, one copy shared with a tied head: lookups
            # dequantize only the step's rows (perplexity: bench/perplexity.py, README).
            tied = self.lm_head is self.embed
            self.embed = quantize_weight(self.embed)
            if tied:
                self.lm_head = self.embed
            elif isinstance(self.lm_head, torch.Tensor):
                self.lm_head = quantize_weight(self.lm_head)
            _release_freed_memory()  # the float weights just freed (SmolLM2: RSS 604 -> 471 MB)
            self._log_quantization()

    @property
    def _quantized_by(self) -> str:
        """What quantized the weights, for messages: the checkpoint, or ``--quantization int8``."""
        return f"this {self.quantization} checkpoint" if self.checkpoint else "--quantization int8"

    def _to_int8(self, layer: _Layer) -> None:
        """A layer's linear weights to int8 per output channel (kernels/int8.py): a float model's
        (``--quantization int8``), or a GPTQ/AWQ checkpoint's unpacked ones. Norms stay float."""
        try:
            for name in ("wqkv", "wo", "wgu", "wd"):
                weight = getattr(layer, name)
                if isinstance(weight, torch.Tensor):  # a checkpoint's 4-bit weights stay as they are
                    setattr(layer, name, quantize_weight(weight))
        except ValueError as exc:  # rows too long for exact int32 sums
            raise UnsupportedModel(f"{self._quantized_by}: {exc}") from None

    def _log_quantization(self) -> None:
        """One line saying what each kind of weight became."""
        how = "10-bit activations (per token) on every linear"
        if self.checkpoint is None:
            logger.info("int8 weights (per output channel) and %s", how)
            return
        weights = [getattr(layer, name) for layer in self.layers for name in ("wqkv", "wo", "wgu", "wd")]
        four_bit = sum(isinstance(w, Int4Weight) for w in weights)
        kept = (
            "every layer's linears 4-bit"
            if four_bit == len(weights)
            else f"{four_bit} of {len(weights)} linears 4-bit, the rest int8"
        )
        head = "4-bit" if isinstance(self.lm_head, Int4Weight) else "int8"
        logger.info(
            "%s checkpoint (%d-bit, group %d): %s, the output head %s; %s",
            self.quantization, self.checkpoint.bits, self.checkpoint.group_size, kept, head, how,
        )  # fmt: skip

    def _build_rope(self, length: int) -> None:
        rope = dict(self.config.get("rope_parameters") or self.config.get("rope_scaling") or {})
        theta = rope.get("rope_theta", self.config.get("rope_theta", 10000.0))
        rope_type = str(rope.get("rope_type", rope.get("type", "default")))
        scaling = 1.0
        if rope_type == "default":
            inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
        else:
            from transformers import AutoConfig
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            hf_config = AutoConfig.for_model(**self.config)
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
        pos = torch.arange(length, dtype=torch.float)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # [L, Dh]
        self.cos = (emb.cos() * scaling).to(self.dtype)
        self.sin = (emb.sin() * scaling).to(self.dtype)

    def _kv_dtype(self, name: str) -> torch.dtype:
        native = self.ops.native_attention
        if name == "auto":
            return torch.float16 if native and self.dtype == torch.float32 else self.dtype
        wanted = torch.float8_e5m2 if name == "fp8_e5m2" else torch_dtype(name)
        if wanted != self.dtype and not native:
            raise UnsupportedModel(
                f"a {name} KV cache needs the native attention kernel, which is not "
                f"available here; use --kv_cache_dtype auto"
            )
        return wanted

    def new_cache(self, max_slots: int, budget_bytes: int) -> KVCache:
        return KVCache(
            self.num_layers,
            self.num_kv_heads,
            self.head_dim,
            max_slots,
            self.max_model_len,
            self.kv_dtype,
            budget_bytes,
        )

    # -- the step --------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, step: StepLayout, cache: KVCache) -> torch.Tensor:
        """Run one step; returns logits [R, V] for the step's rows ``step.logit_rows``, in that order."""
        D = len(step.decode_tokens)
        tokens = list(step.decode_tokens)
        positions = list(step.decode_positions)
        for ch in step.chunks:
            tokens.extend(ch.token_ids)
            positions.extend(range(ch.start, ch.start + len(ch.token_ids)))
        N = len(tokens)
        ids = torch.tensor(tokens, dtype=torch.long)
        pos = torch.tensor(positions, dtype=torch.long)
        x = embedding(ids, self.embed) if isinstance(self.embed, Int8Weight) else F.embedding(ids, self.embed)
        ops = self.ops
        if ops.native_attention:
            row_slots = torch.tensor(
                step.decode_slots + [ch.slot for ch in step.chunks for _ in ch.token_ids], dtype=torch.long
            )
        else:
            decode = _DecodeAttention(step, cache) if D else None
            chunk_masks = [_chunk_mask(ch, self.group) for ch in step.chunks]
        H, KVH, Dh = self.num_heads, self.num_kv_heads, self.head_dim

        for li, layer in enumerate(self.layers):
            h = ops.rms_norm(x, layer.ln1, self.eps)
            qkv = ops.linear(h, layer.wqkv, layer.bqkv)  # [N, (H + 2KVH) * Dh]
            ops.rope_(qkv, H + KVH, Dh, pos, self.cos, self.sin)  # q and k heads at once
            q = qkv[:, : H * Dh].view(N, H, Dh)
            k = qkv[:, H * Dh : (H + KVH) * Dh].view(N, KVH, Dh)
            v = qkv[:, (H + KVH) * Dh :].view(N, KVH, Dh)
            kc, vc = cache.k[li], cache.v[li]
            if ops.native_attention:
                attn = ops.attention(q, k, v, kc, vc, row_slots, pos)  # [N, H * Dh]
            else:
                outs = []
                if decode is not None:
                    outs.append(decode.run(q[:D], k[:D], v[:D], kc, vc))
                row = D
                for ch, mask in zip(step.chunks, chunk_masks):
                    T = len(ch.token_ids)
                    outs.append(
                        _chunk_attention(
                            q[row : row + T], k[row : row + T], v[row : row + T], kc, vc, ch, mask, self.group
                        )
                    )
                    row += T
                attn = outs[0] if len(outs) == 1 else torch.cat(outs)  # [N, H * Dh]
            ops.linear_add_(x, attn, layer.wo)
            h = ops.rms_norm(x, layer.ln2, self.eps)
            ops.linear_add_(x, ops.silu_mul(ops.linear(h, layer.wgu)), layer.wd)

        rows = step.logit_rows
        if not rows:
            return torch.empty(0, self.vocab_size)
        sel = x if len(rows) == N else x[torch.tensor(rows)]
        sel = ops.rms_norm(sel, self.norm, self.eps)
        return ops.linear(sel, self.lm_head).float()  # [R, V]


class _DecodeAttention:
    """Attention in torch for one new token per decoding slot, reading the cache view in place.

    The path without the native kernels (they attend decode and prompt rows alike).

    The G query heads that share a KV head are laid along the query-length axis, so
    grouped-query attention needs no repeated K/V: q [n, KVH, G, Dh] against
    K [n, KVH, L, Dh].
    """

    def __init__(self, step: StepLayout, cache: KVCache) -> None:
        n = step.num_slots
        self.n = n
        self.slots = torch.tensor(step.decode_slots, dtype=torch.long)
        self.pos = torch.tensor(step.decode_positions, dtype=torch.long)
        self.dense = step.decode_slots == list(range(n))
        self.max_len = max(step.decode_positions) + 1
        # Row of (slot, kv head, position) in the cache viewed as [slots * KVH * cap, Dh]:
        # index_copy_ on one dim is far cheaper than an advanced-indexing write.
        heads = torch.arange(cache.num_kv_heads)
        self.flat_rows = (
            (self.slots[:, None] * cache.num_kv_heads + heads[None, :]) * cache.capacity + self.pos[:, None]
        ).reshape(-1)  # [D * KVH]
        lengths = torch.ones(n, dtype=torch.long)
        lengths[self.slots] = self.pos + 1
        self.mask = (torch.arange(self.max_len)[None, :] < lengths[:, None]).view(n, 1, 1, self.max_len)

    def run(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor
    ) -> torch.Tensor:
        D, H, Dh = q.shape
        KVH = k.shape[1]
        kc.view(-1, Dh).index_copy_(0, self.flat_rows, k.reshape(-1, Dh))  # this step's K/V at each slot's position
        vc.view(-1, Dh).index_copy_(0, self.flat_rows, v.reshape(-1, Dh))
        qg = q.view(D, KVH, H // KVH, Dh)
        if not self.dense:
            full = q.new_zeros(self.n, KVH, H // KVH, Dh)
            full[self.slots] = qg
            qg = full
        out = F.scaled_dot_product_attention(
            qg, kc[: self.n, :, : self.max_len], vc[: self.n, :, : self.max_len], attn_mask=self.mask
        )  # [n, KVH, G, Dh]
        if not self.dense:
            out = out[self.slots]
        return out.reshape(D, H * Dh)


def _chunk_mask(ch: ChunkInput, group: int) -> torch.Tensor:
    """[G*T, start+T] causal mask for a prompt chunk that continues at ``ch.start``."""
    T = len(ch.token_ids)
    end = ch.start + T
    allowed = torch.arange(end)[None, :] <= (ch.start + torch.arange(T))[:, None]  # [T, end]
    return allowed.repeat(group, 1)


def _chunk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    ch: ChunkInput,
    mask: torch.Tensor,
    group: int,
) -> torch.Tensor:
    T, H, Dh = q.shape
    KVH = k.shape[1]
    end = ch.start + T
    kc[ch.slot, :, ch.start : end] = k.transpose(0, 1)
    vc[ch.slot, :, ch.start : end] = v.transpose(0, 1)
    qg = q.view(T, KVH, group, Dh).permute(1, 2, 0, 3).reshape(KVH, group * T, Dh)
    out = F.scaled_dot_product_attention(qg, kc[ch.slot, :, :end], vc[ch.slot, :, :end], attn_mask=mask)
    return out.view(KVH, group, T, Dh).permute(2, 0, 1, 3).reshape(T, H * Dh)


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them otherwise)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _quantization(requested: str | None, checkpoint: QuantizedCheckpoint | None) -> str | None:
    """What the engine runs: ``--quantization`` checked against the checkpoint's ``quantization_config``
    (a quantized checkpoint is detected without the flag, as vLLM does)."""
    if requested not in (None, "int8", *METHODS):
        raise UnsupportedModel(
            f"--quantization {requested} is not supported by isvc's CPU engine; use int8, or a {' or '.join(METHODS)} checkpoint"
        )
    if checkpoint is None:
        if requested in METHODS:
            raise UnsupportedModel(
                f"--quantization {requested} loads a {requested} checkpoint, and config.json has no "
                "quantization_config; quantize a float model at load with --quantization int8"
            )
        return requested
    if requested not in (None, checkpoint.method):
        raise UnsupportedModel(
            f"the checkpoint's quantization_config names {checkpoint.method}, but --quantization says {requested}"
        )
    return checkpoint.method


def torch_dtype(name: str) -> torch.dtype:
    table = {
        "float32": torch.float32,
        "float": torch.float32,
        "fp32": torch.float32,
        "auto": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise UnsupportedModel(f"unknown dtype {name!r}; use one of {', '.join(table)}")
    return table[name]
