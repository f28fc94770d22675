"""Encoder-decoder generation (T5, BART, Marian, ...: KServe's ``text2text_generation`` task).

Only the model and its runner differ from decoder generation: the scheduler, the sampler and
the output processor are the generative engine's, so a T5 request streams, stops, samples and
reports logprobs exactly like a Llama one. The model runs on transformers' own modules
(``AutoModelForSeq2SeqLM``), as KServe's Hugging Face backend does, so every encoder-decoder
family transformers knows is served.

The scheduler sees one sequence per request: the prompt (the encoder's input), then the output.
The step that completes a prompt runs the encoder once over all of it (an earlier chunk of a
long prompt runs nothing: the encoder attends in both directions, so it needs the whole input)
and the decoder on the model's ``decoder_start_token_id``; each later step feeds the decoder the
request's last output token against its own cache. Requests run one at a time within a step:
relative (T5) or learned (BART) positions and caches of different lengths make a padded batch
model-specific, and this way one request's tokens never depend on its neighbours'. For the same
reason one request's failure in the model is its own: the others in the step go on.

The encoder's output and the decoder's caches of running requests are held to
``--kv_cache_space`` as a decoder's KV cache is: over it, the longest request finishes (length).
A ``forced_bos_token_id`` (BART summarizers, mBART/NLLB target languages) is the first output
token, as ``generate`` forces it; ``forced_eos_token_id`` (an EOS forced at the length limit) is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from isvc.engine.errors import UnsupportedModel
from isvc.engine.kv_cache import KVCacheFull
from isvc.engine.request import EngineRequest
from isvc.engine.runner import StepResult
from isvc.engine.scheduler import SchedulerOutput, SlotMove
from isvc.engine.step import RowKind, build_layout
from isvc.tasks import is_encoder_decoder

DEFAULT_MAX_LEN = 512
"""Context when config.json names none (T5's relative positions have no hard limit; its docs say 512)."""


class Seq2SeqModel:
    """An ``AutoModelForSeq2SeqLM`` loaded from a local folder, with what the engine reads of it."""

    def __init__(self, model_dir: Path, dtype: torch.dtype, max_model_len: int | None, trust_remote_code: bool) -> None:
        from transformers import AutoModelForSeq2SeqLM

        self.config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
        if not is_encoder_decoder(self.config):
            arch = (self.config.get("architectures") or ["?"])[0]
            raise UnsupportedModel(f"{arch} is not an encoder-decoder model (config.json's is_encoder_decoder)")
        try:
            self.module = AutoModelForSeq2SeqLM.from_pretrained(
                str(model_dir), dtype=dtype, trust_remote_code=trust_remote_code
            ).eval()
        except (OSError, ValueError) as exc:  # no weights, or a config transformers cannot map
            raise UnsupportedModel(f"cannot load {model_dir} as an encoder-decoder model: {exc}") from exc
        c = self.module.config
        self.vocab_size = int(self.module.get_output_embeddings().weight.shape[0])
        generation = self.module.generation_config
        start = c.decoder_start_token_id
        if start is None:
            start = getattr(generation, "decoder_start_token_id", None)
        if start is None:
            raise UnsupportedModel("config.json names no decoder_start_token_id: the decoder cannot start")
        self.decoder_start_token_id = int(start)
        forced = getattr(generation, "forced_bos_token_id", None)
        self.forced_bos_token_id: int | None = int(forced) if forced is not None else None
        positions = self.config.get("max_position_embeddings")  # learned positions: a hard limit
        if positions and max_model_len and max_model_len > int(positions):
            raise UnsupportedModel(f"--max_model_len {max_model_len} exceeds the model's {positions} positions")
        limit = next(
            (int(self.config[k]) for k in ("max_position_embeddings", "n_positions") if self.config.get(k)),
            DEFAULT_MAX_LEN,
        )
        self.max_model_len = max_model_len or limit


@dataclass(slots=True)
class _Decoding:
    """One running request's encoder output and decoder cache (its slot's state)."""

    request_id: str
    encoder_outputs: Any
    cache: Any = None


class Seq2SeqRunner:
    """The scheduler's output in, the step's logits and their layout out (as ``ModelRunner``)."""

    def __init__(self, model: Seq2SeqModel, budget_bytes: int) -> None:
        self.model = model
        self.cache = SlotStates(budget_bytes)

    def reuse_prefix(self, req: EngineRequest) -> None:
        """No prefix reuse: an encoder's states depend on the whole prompt."""

    def move_slots(self, moves: list[SlotMove]) -> None:
        for move in moves:
            self.cache.move(move.src, move.dst, move.length)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> StepResult:
        """Run the step; KVCacheFull (before anything ran) when the held states exceed the budget."""
        assert not out.drafts, "speculation is off for encoder-decoder models"
        layout = build_layout(out)
        assert not layout.prompt_scored, "prompt logprobs are refused for encoder-decoder models"
        self.cache.keep(out.num_slots)
        usage = self.cache.nbytes / self.cache.budget_bytes
        if usage > 1.0:
            raise KVCacheFull(f"encoder outputs and decoder caches hold {self.cache.nbytes} bytes, over the budget")
        logits = torch.zeros(len(layout.logit_rows), self.model.vocab_size)
        result = StepResult(out, layout, logits, kv_usage=usage)
        for span in layout.sampled:
            req = span.request
            assert req.slot is not None
            try:
                if span.kind is RowKind.PROMPT_LAST:
                    state = self._encode(req)
                    self.cache.states[req.slot] = state
                    logits[span.row] = self._decode(state, self.model.decoder_start_token_id)
                    if self.model.forced_bos_token_id is not None:
                        _force(logits[span.row], self.model.forced_bos_token_id)
                else:
                    state = self.cache.states[req.slot]
                    assert state.request_id == req.request_id, "a slot's state belongs to its request"
                    logits[span.row] = self._decode(state, req.token_at(span.position))
            except Exception as exc:  # this request's own input broke the model: it fails alone
                result.errors[req] = exc
                self.cache.states.pop(req.slot, None)
        return result

    def _encode(self, req: EngineRequest) -> _Decoding:
        ids = torch.tensor([req.prompt_token_ids], dtype=torch.long)
        encoder = self.model.module.get_encoder()
        return _Decoding(req.request_id, encoder(input_ids=ids, return_dict=True))

    def _decode(self, state: _Decoding, token: int) -> torch.Tensor:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if state.cache is None:
            state.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.model.module(
            encoder_outputs=state.encoder_outputs,
            decoder_input_ids=torch.tensor([[token]], dtype=torch.long),
            past_key_values=state.cache,
            use_cache=True,
            return_dict=True,
        )
        state.cache = out.past_key_values
        return out.logits[0, -1].float()


def _force(row: torch.Tensor, token: int) -> None:
    """Only ``token`` can be sampled from ``row`` (as transformers' ForcedBOSTokenLogitsProcessor)."""
    keep = row[token].item()
    row.fill_(-float("inf"))
    row[token] = keep


class SlotStates:
    """Each running slot's encoder output and decoder cache; what the engine's KV cache is for a decoder."""

    def __init__(self, budget_bytes: int) -> None:
        self.states: dict[int, _Decoding] = {}
        self.budget_bytes = budget_bytes

    def keep(self, num_slots: int) -> None:
        """Drop the states of slots no request holds any more (slots are dense: 0..num_slots-1)."""
        for slot in [s for s in self.states if s >= num_slots]:
            del self.states[slot]

    def move(self, src: int, dst: int, length: int) -> None:
        state = self.states.pop(src, None)
        if state is not None:
            self.states[dst] = state
        else:
            self.states.pop(dst, None)

    def shrink(self) -> None:
        """Idle: nothing runs, nothing is kept."""
        self.states.clear()

    @property
    def nbytes(self) -> int:
        total = 0
        for state in self.states.values():
            total += sum(t.numel() * t.element_size() for t in _tensors(state.encoder_outputs))
            if state.cache is not None:
                for layer in state.cache.self_attention_cache.layers + state.cache.cross_attention_cache.layers:
                    total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if t is not None)
        return total


def _tensors(outputs: Any) -> list[torch.Tensor]:
    hidden = getattr(outputs, "last_hidden_state", None)
    return [hidden] if isinstance(hidden, torch.Tensor) else []
