"""NativeBert: the BERT family's encoder (BERT, RoBERTa, XLM-RoBERTa, CamemBERT) on isvc's own ops.

Why not transformers' ``BertModel``: importing it costs ~140 MB of RSS, and a forward is ~150
module calls plus mask building, ~3 ms of Python on this CPU before any arithmetic — a quarter of
a lone short input's time (all-MiniLM-L6-v2: a 3-token forward 6.1 ms, of which the linears are
2.9). Here a layer is seven ops: one fused QKV linear, attention, and two linear + residual +
layer norm steps, read straight from ``model.safetensors``. Small row counts go to the native
AVX2 linear, larger ones to torch (MKL): ``small_rows_linear``.

``NativeBert.load`` returns None, with the reason, for anything it does not cover (another
architecture or position embedding, a missing weight, a non-float32 dtype, weights that are not
one safetensors file); the runner then uses transformers' class as before. Its math is
transformers' (tests compare every head with transformers' own model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from isvc.engine.client import Task
from isvc.engine.kernels.ops import Linear, small_rows_linear

logger = logging.getLogger(__name__)

_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "camembert"}
_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert"}
_BASE_PREFIXES = ("", "bert.", "roberta.")
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: torch.Tensor  # [3H, H]: query, key and value stacked, one matmul
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    up_w: torch.Tensor
    up_b: torch.Tensor
    down_w: torch.Tensor
    down_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor


class NotCovered(Exception):
    """The folder needs transformers' own class (the message says why)."""


class NativeBert:
    """The encoder and, per task, its head: last hidden states (embeddings) or logits."""

    def __init__(self, config: dict[str, Any], weights: Callable[[str], torch.Tensor], task: Task) -> None:
        model_type = str(config.get("model_type", ""))
        if model_type not in _MODEL_TYPES:
            raise NotCovered(f"model_type {model_type!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise NotCovered(f"position_embedding_type {config.get('position_embedding_type')!r}")
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise NotCovered("a decoder configuration")
        act = str(config.get("hidden_act", "gelu"))
        if act not in _ACTIVATIONS:
            raise NotCovered(f"hidden_act {act!r}")
        if task not in (Task.TEXT_EMBEDDING, Task.SEQUENCE_CLASSIFICATION, Task.RERANK, Task.TOKEN_CLASSIFICATION):
            raise NotCovered(f"task {task.value}")
        self.task = task
        self.act = _ACTIVATIONS[act]
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.pad_id = int(config.get("pad_token_id") or 0)
        # RoBERTa's positions start after the pad id's row (transformers' create_position_ids_from_input_ids)
        self.first_position = self.pad_id + 1 if model_type in _ROBERTA_LIKE else 0
        self.roberta_head = model_type in _ROBERTA_LIKE
        self._linear: Linear = small_rows_linear()
        prefix = _base_prefix(weights)
        w = lambda name: weights(prefix + name)
        self.word = w("embeddings.word_embeddings.weight")
        self.positions = w("embeddings.position_embeddings.weight")
        self.types = w("embeddings.token_type_embeddings.weight")
        self.emb_ln = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers = [self._layer(w, f"encoder.layer.{i}.") for i in range(int(config["num_hidden_layers"]))]
        self.head = self._head(weights, prefix)

    @staticmethod
    def _layer(w: Callable[[str], torch.Tensor], at: str) -> _Layer:
        qkv = [f"{at}attention.self.{part}" for part in ("query", "key", "value")]
        return _Layer(
            qkv_w=torch.cat([w(f"{name}.weight") for name in qkv]).contiguous(),
            qkv_b=torch.cat([w(f"{name}.bias") for name in qkv]),
            out_w=w(f"{at}attention.output.dense.weight"),
            out_b=w(f"{at}attention.output.dense.bias"),
            ln1_w=w(f"{at}attention.output.LayerNorm.weight"),
            ln1_b=w(f"{at}attention.output.LayerNorm.bias"),
            up_w=w(f"{at}intermediate.dense.weight"),
            up_b=w(f"{at}intermediate.dense.bias"),
            down_w=w(f"{at}output.dense.weight"),
            down_b=w(f"{at}output.dense.bias"),
            ln2_w=w(f"{at}output.LayerNorm.weight"),
            ln2_b=w(f"{at}output.LayerNorm.bias"),
        )

    def _head(self, weights: Callable[[str], torch.Tensor], prefix: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (weight, bias) pairs after the encoder: none for embeddings; for sequence
        classification BERT's pooler then classifier, RoBERTa's classifier.dense then out_proj."""
        if self.task is Task.TEXT_EMBEDDING:
            return []
        pair = lambda name: (weights(f"{name}.weight"), weights(f"{name}.bias"))
        if self.task is Task.TOKEN_CLASSIFICATION:
            return [pair("classifier")]
        if self.roberta_head:
            return [pair("classifier.dense"), pair("classifier.out_proj")]
        return [pair(f"{prefix}pooler.dense"), pair("classifier")]

    # -- the forward ----------------------------------------------------------------------

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        """ids, mask, types [B, T] (right-padded) -> states [B, T, H] for embeddings, else logits
        ([B, labels] for sequence classification, [B, T, labels] per token)."""
        B, T = ids.shape
        padded = not bool(mask.all())
        x = self.word[ids] + (self.types[types] if types is not None else self.types[0])
        x = x.add_(self.positions[self.first_position : self.first_position + T])
        x = F.layer_norm(x.view(B * T, self.hidden), (self.hidden,), *self.emb_ln, self.eps)
        # padded keys get -inf before the softmax (padding never changes a real row)
        keys = mask.view(B, 1, 1, T).bool() if padded else None
        for layer in self.layers:
            x = self._block(x, layer, B, T, keys)
        states = x.view(B, T, self.hidden)
        if not self.head:
            return states
        if self.task is Task.TOKEN_CLASSIFICATION:
            (w, b) = self.head[0]
            return self._linear(x, w, b).view(B, T, -1)
        first = states[:, 0].contiguous()  # [CLS] / <s>
        (dense_w, dense_b), (out_w, out_b) = self.head
        return self._linear(torch.tanh(self._linear(first, dense_w, dense_b)), out_w, out_b)

    def _block(self, x: torch.Tensor, layer: _Layer, B: int, T: int, keys: torch.Tensor | None) -> torch.Tensor:
        linear, H = self._linear, self.hidden
        qkv = linear(x, layer.qkv_w, layer.qkv_b).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=keys)  # [B, heads, T, Dh]
        context = context.transpose(1, 2).reshape(B * T, H)
        x = F.layer_norm(linear(context, layer.out_w, layer.out_b).add_(x), (H,), layer.ln1_w, layer.ln1_b, self.eps)
        up = self.act(linear(x, layer.up_w, layer.up_b))
        return F.layer_norm(linear(up, layer.down_w, layer.down_b).add_(x), (H,), layer.ln2_w, layer.ln2_b, self.eps)


def load_native_bert(model_dir: Path, config: dict[str, Any], task: Task, dtype: torch.dtype) -> NativeBert | None:
    """The native encoder for the folder, or None (logged with the reason) when it needs transformers."""
    try:
        if dtype != torch.float32:
            raise NotCovered(f"dtype {dtype}")
        path = Path(model_dir) / "model.safetensors"
        if not path.is_file():
            raise NotCovered("no single model.safetensors file")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            names = set(file.keys())

            def weight(name: str) -> torch.Tensor:
                if name not in names:
                    raise NotCovered(f"no weight {name!r}")
                tensor: torch.Tensor = file.get_tensor(name)
                if tensor.dtype != torch.float32:
                    raise NotCovered(f"{name} is {tensor.dtype}")
                return tensor

            model = NativeBert(config, weight, task)
    except (NotCovered, KeyError, ValueError, OSError) as exc:
        logger.info("the encoder runs on transformers' class: the native BERT path does not cover %s", exc)
        return None
    logger.info("native BERT encoder (%d layers, fused QKV) for %s", len(model.layers), task.value)
    return model


def _base_prefix(weights: Callable[[str], torch.Tensor]) -> str:
    """Where the encoder's weights sit: at the top (``BertModel``) or under its head's prefix."""
    for prefix in _BASE_PREFIXES:
        try:
            weights(prefix + "embeddings.word_embeddings.weight")
        except NotCovered:
            continue
        return prefix
    raise NotCovered("no embeddings.word_embeddings.weight")
