"""EncoderRunner: one padded forward pass of transformers' own model class, and the rows each input gets.

The model is the class config.json names (``BertModel``, ``XLMRobertaForSequenceClassification``
...), looked up on ``transformers`` by name so only that model's module is imported (the
``Auto*`` registry imports ~1,000 modules). A batch is right-padded once to its longest input;
padding never changes a real row (attention masks; position ids count real tokens only), so an
input's answer is the same alone or in any batch, up to float rounding.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from isvc.engine.client import EncodeInput, Pooling, PoolingParams, Task
from isvc.engine.encoder.bert import load_native_bert
from isvc.engine.encoder.task import EmbeddingLayout, architecture, embedding_layout, natural_task, read_config
from isvc.engine.kernels.ops import Linear, small_rows_linear
from isvc.errors import ConfigError

_AUTO_CLASS = {
    Task.TEXT_EMBEDDING: "AutoModel",
    Task.SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
    Task.RERANK: "AutoModelForSequenceClassification",
    Task.TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    Task.FILL_MASK: "AutoModelForMaskedLM",
}
Rows = list[float] | list[list[float]]


class EncoderRunner:
    """Loads the weights for ``task`` and turns a batch of inputs into each input's rows."""

    def __init__(self, model_dir: Path, task: Task, dtype: torch.dtype, trust_remote_code: bool = False) -> None:
        self.task = task
        self.config = read_config(model_dir)
        self.architecture = architecture(self.config)
        decoder = natural_task(model_dir, self.config) is Task.TEXT_GENERATION
        self.layout = embedding_layout(model_dir, decoder) if task is Task.TEXT_EMBEDDING else None
        self.pad_id = int(self.config.get("pad_token_id") or 0)
        has_segments = int(self.config.get("type_vocab_size", 0) or 0) > 1
        self._mlm_head: Any = None
        self.native = None if trust_remote_code else load_native_bert(model_dir, self.config, task, dtype)
        if self.native is not None:
            self.model: Any = None
            self.takes_token_types = has_segments
        else:
            model = _load(model_dir, task, self.architecture, dtype, trust_remote_code)
            if task is Task.TEXT_EMBEDDING and model is not model.base_model:
                model = model.base_model  # e.g. --task text_embedding on a classifier: its encoder alone
            self.model = model.eval()
            if dtype == torch.float32:
                native_small_linears(self.model)
            # BERT's ``cls`` / RoBERTa's ``lm_head`` map hidden states to the vocabulary: applied to the
            # mask positions only, not to every token (T x vocab logits, more work than the encoder)
            if task is Task.FILL_MASK:
                self._mlm_head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
            self.takes_token_types = has_segments and "token_type_ids" in inspect.signature(model.forward).parameters
        self.hidden_size = int(self.config.get("hidden_size") or self.config.get("dim") or 0)
        self.vocab_size = int(self.config.get("vocab_size", 0))

    @property
    def max_positions(self) -> int:
        """Longest input the position embeddings allow (RoBERTa's first rows sit before the pad id)."""
        positions = int(self.config.get("max_position_embeddings", 512))
        if "roberta" in str(self.config.get("model_type", "")) or "camembert" in str(self.config.get("model_type")):
            positions -= self.pad_id + 1
        return positions

    def run(self, inputs: Sequence[EncodeInput], params: Sequence[PoolingParams], mask_id: int | None) -> list[Rows]:
        """One forward over ``inputs`` (already within the length limit); one answer per input."""
        lengths = [len(x.token_ids) for x in inputs]
        width = max(lengths)
        pad = self.pad_id
        # one tensor from padded lists: cheaper than a tensor per row at small sizes
        ids = torch.tensor([x.token_ids + [pad] * (width - n) for x, n in zip(inputs, lengths, strict=True)])
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        types = None
        if self.takes_token_types:
            types = torch.tensor(
                [(x.token_type_ids or [0] * n) + [0] * (width - n) for x, n in zip(inputs, lengths, strict=True)]
            )
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            kwargs["token_type_ids"] = types
        with torch.inference_mode():
            if self.task is Task.FILL_MASK and self._mlm_head is not None:
                return self._fill_mask(kwargs, mask_id)
            # states [B, T, H] for embeddings, else the head's logits
            out = self.native(ids, mask, types) if self.native is not None else self._transformers(kwargs)
            if self.task is Task.TEXT_EMBEDDING:
                assert self.layout is not None
                return _embed(out, mask, lengths, self.layout, params)
            logits = out.float()
            if self.task in (Task.SEQUENCE_CLASSIFICATION, Task.RERANK):
                return list(logits.tolist())
            if self.task is Task.TOKEN_CLASSIFICATION:
                return [logits[row, :n].tolist() for row, n in enumerate(lengths)]
            # fill_mask: vocabulary logits at each mask position, in order
            return [logits[row, :n][ids[row, :n] == mask_id].tolist() for row, n in enumerate(lengths)]

    def _transformers(self, kwargs: dict[str, Any]) -> torch.Tensor:
        out = self.model(**kwargs)
        return out.last_hidden_state if self.task is Task.TEXT_EMBEDDING else out.logits

    def _fill_mask(self, kwargs: dict[str, Any], mask_id: int | None) -> list[Rows]:
        assert self._mlm_head is not None
        states = self.model.base_model(**kwargs).last_hidden_state  # [B, T, H]
        at_mask = kwargs["input_ids"] == mask_id  # [B, T]; padding is never the mask token
        logits = self._mlm_head(states[at_mask]).float()  # [masks in row-major order, vocab]
        counts = at_mask.sum(dim=1).tolist()
        return [part.tolist() for part in torch.split(logits, counts)]


def _embed(
    states: torch.Tensor,
    mask: torch.Tensor,
    lengths: list[int],
    layout: EmbeddingLayout,
    params: Sequence[PoolingParams],
) -> list[Rows]:
    pooled = pool(states.float(), mask, lengths, layout.pooling)  # [B, H]
    normalized: list[list[float]] | None = None
    answers: list[Rows] = []
    for row, p in enumerate(params):
        normalize = layout.normalize if p.normalize is None else p.normalize
        if p.dimensions is None:
            if normalize:
                if normalized is None:  # one batched normalization for the common case
                    normalized = torch.nn.functional.normalize(pooled, dim=-1).tolist()
                answers.append(normalized[row])
            else:
                answers.append(pooled[row].tolist())
            continue
        vector = pooled[row, : p.dimensions]  # Matryoshka: the first dimensions, then re-normalized
        if normalize:
            vector = torch.nn.functional.normalize(vector, dim=-1)
        answers.append(vector.tolist())
    return answers


def pool(states: torch.Tensor, mask: torch.Tensor, lengths: list[int], pooling: Pooling) -> torch.Tensor:
    """sentence-transformers' pooling of ``states`` [B, T, H] over real tokens (``mask`` [B, T])."""
    if pooling == "cls":
        return states[:, 0]
    if pooling == "last":  # right padding: the last real token of each row
        return states[torch.arange(states.shape[0]), torch.tensor(lengths) - 1]
    weights = mask.unsqueeze(-1).to(states.dtype)
    if pooling == "max":
        return states.masked_fill(weights == 0, -1e9).max(dim=1).values
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


def native_small_linears(model: torch.nn.Module) -> None:
    """Send the model's small float32 matmuls to isvc's AVX2 kernel, the rest to torch (MKL).

    (ops.small_rows_linear says why.) Without the kernels (no compiler, ISVC_NATIVE_KERNELS=0)
    nothing changes.
    """
    linear = small_rows_linear()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = _rows_linear(module, linear)  # type: ignore[method-assign,assignment]


def _rows_linear(module: torch.nn.Linear, linear: Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias = module.weight, module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        rows = x.numel() // width if width else 0
        if rows == 0:
            return torch.nn.functional.linear(x, weight, bias)
        return linear(x.reshape(rows, width), weight, bias).view(*x.shape[:-1], weight.shape[0])

    return forward


def _load(model_dir: Path, task: Task, arch: str, dtype: torch.dtype, trust_remote_code: bool) -> Any:
    import transformers

    cls = getattr(transformers, arch, None) if not trust_remote_code else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        cls = getattr(transformers, _AUTO_CLASS[task])  # custom code, or a folder without architectures
    try:
        return cls.from_pretrained(str(model_dir), dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load {arch} from {model_dir}: {exc}") from exc
