"""Logits -> next tokens for a whole step at once: logit shaping, temperature, top-k/top-p/min-p, seeds, logprobs.

Shaping (per row, only for rows that ask): repetition, presence and frequency penalties,
``logit_bias``, ``allowed_token_ids``, and ``min_tokens`` (EOS and stop token ids masked until
the output is that long). It changes the logits every pick and logprob of that row sees.

Structured outputs (structured.py): a constrained row's logits are first masked to the tokens
its grammar accepts next, so every later step of shaping and picking sees only those.

Greedy rows take an argmax and nothing else. Sampled rows share one softmax; a row
with its own seed draws its noise from its own torch.Generator, so a seeded request
gives the same text whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from isvc.engine import structured
from isvc.engine.params import SamplingParams
from isvc.engine.structured import Grammars

MAX_LOGIT = 1e30
"""Shaped logits are capped here: finite even after the smallest temperature divides them."""


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None  # chosen token's logprob per row (when any row asked)
    top: list[list[tuple[int, float]]] | None  # top-k (id, logprob) per row (when any row asked)


class Sampler:
    def __init__(self, default_seed: int = 0, eos_ids: Collection[int] = (), grammars: Grammars | None = None) -> None:
        self.generator = torch.Generator().manual_seed(default_seed)
        self.request_generators: dict[str, torch.Generator] = {}
        self.eos_ids = tuple(eos_ids)
        self.grammars = grammars
        self.matchers: dict[str, Any] = {}
        """The grammar matcher of each constrained request, by request id."""

    def add(self, request_id: str, params: SamplingParams, grammar: str | None = None) -> None:
        """At admission: a seeded request's generator, a constrained request's matcher (a seed torch
        refuses, or a grammar that cannot be matched, fails that request only)."""
        if params.seed is not None:
            self.request_generators[request_id] = torch.Generator().manual_seed(params.seed)
        if params.structured is not None:
            if self.grammars is None or grammar is None:
                raise RuntimeError("a structured output request reached a sampler without its grammar")
            self.matchers[request_id] = self.grammars.matcher(grammar)

    def forget(self, request_id: str) -> None:
        self.request_generators.pop(request_id, None)
        self.matchers.pop(request_id, None)

    def verify(self, request_id: str, logits: torch.Tensor, drafts: list[int]) -> list[int]:
        """The tokens a verification step yields for a constrained greedy request, its grammar moved past them.

        ``logits`` [k + 1, V]: row j follows the prefix plus ``drafts[:j]``. Each row is masked to what
        the grammar accepts after the tokens taken so far, so the result is exactly what k + 1 plain
        constrained greedy steps would give (speculation.accepted's rule, one row at a time)."""
        matcher = self.matchers[request_id]
        assert self.grammars is not None
        tokens: list[int] = []
        for j in range(logits.shape[0]):
            row = logits[j : j + 1].clone()
            self.grammars.mask(row, [matcher])
            token = int(row.argmax(dim=-1))
            self.accept(request_id, token)
            tokens.append(token)
            if j >= len(drafts) or token != drafts[j] or token in self.eos_ids:
                break
        return tokens

    def forced_tokens(self, request_id: str, limit: int) -> list[int]:
        """Up to ``limit`` tokens a constrained request's grammar forces next (JSON keys and punctuation):
        drafts that a verification step accepts unless the model tokenizes them otherwise."""
        matcher = self.matchers.get(request_id)
        if matcher is None or matcher.is_stopped():
            return []
        return list(matcher.compute_ff_tokens())[:limit]

    def accept(self, request_id: str, token_id: int) -> None:
        """The token picked for a constrained request moves its grammar on (no-op for the others)."""
        matcher = self.matchers.get(request_id)
        if matcher is not None and not matcher.is_stopped():  # stopped: its EOS was taken (ignore_eos)
            structured.consume(matcher, token_id)

    def sample(
        self,
        logits: torch.Tensor,
        request_ids: list[str],
        params: list[SamplingParams],
        output_ids: list[list[int]],
        prompt_ids: Sequence[list[int]] | None = None,
    ) -> SampleResult:
        """logits [R, V] float32; one row per request in ``request_ids`` (a seeded one ``add``-ed first).

        ``prompt_ids`` (per row) are needed by ``repetition_penalty`` only."""
        R = logits.shape[0]
        want_logprobs = any(p.logprobs is not None for p in params)
        # the model's own logprobs, before any shaping (vLLM's default "raw_logprobs"): always finite
        raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        shaped = [i for i, p in enumerate(params) if p.shapes_logits]
        if shaped:
            logits = logits.clone()
            self._mask_to_grammars(logits, request_ids)
            for i in shaped:
                prompt = prompt_ids[i] if prompt_ids is not None else []
                self._shape(logits[i], params[i], output_ids[i], prompt)
            # extreme shaping (a repetition_penalty of 1e-300) can make a logit +inf, and +inf
            # NaN after the softmax; a large finite value keeps the row's order, and masks stay -inf
            logits.nan_to_num_(nan=float("-inf"), posinf=MAX_LOGIT)

        chosen = logits.argmax(dim=-1)  # [R]
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if sampled:
            idx = torch.tensor(sampled)
            rows = logits[idx]
            temps = torch.tensor([params[i].temperature for i in sampled], dtype=rows.dtype)[:, None]
            rows = _top_k_top_p(
                rows / temps,
                [params[i].top_k for i in sampled],
                [params[i].top_p for i in sampled],
                [params[i].min_p for i in sampled],
            )
            probs = torch.softmax(rows, dim=-1)
            noise = torch.empty_like(probs)
            for j, i in enumerate(sampled):
                gen = self.generator if params[i].seed is None else self.request_generators[request_ids[i]]
                noise[j].exponential_(generator=gen)
            # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p.
            chosen[idx] = (probs / noise).argmax(dim=-1)

        token_ids = chosen.tolist()
        if raw_logprobs is None:
            return SampleResult(token_ids, None, None)
        picked = raw_logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        k = min(max((p.logprobs or 0) for p in params), logits.shape[-1])
        top: list[list[tuple[int, float]]] = [[] for _ in range(R)]
        if k > 0:
            vals, ids = raw_logprobs.topk(k, dim=-1)
            for i, p in enumerate(params):
                n = p.logprobs or 0
                top[i] = list(zip(ids[i, :n].tolist(), vals[i, :n].tolist()))
        return SampleResult(token_ids, picked, top)

    def _mask_to_grammars(self, logits: torch.Tensor, request_ids: list[str]) -> None:
        """Mask each constrained row of ``logits`` to the tokens its grammar accepts next (one bitmask).

        A complete grammar accepts only EOS: the output ends where its grammar does."""
        live = [(i, self.matchers[r]) for i, r in enumerate(request_ids) if r in self.matchers]
        if not live or self.grammars is None:
            return
        for _, matcher in live:  # (a batch that raises is sampled again row by row: this row fails alone)
            if matcher.is_error():
                raise RuntimeError(f"the output grammar failed: {matcher.get_error()}")
        matchers = [m for _, m in live]
        if len(live) == logits.shape[0]:  # every row constrained (in order): no copies
            self.grammars.mask(logits, matchers)
            return
        index = torch.tensor([i for i, _ in live])
        rows = logits[index]
        self.grammars.mask(rows, matchers)
        logits[index] = rows

    def _shape(self, row: torch.Tensor, p: SamplingParams, output_ids: list[int], prompt_ids: list[int]) -> None:
        """Apply ``p``'s logit shaping to ``row`` [V] in place, in vLLM's order: allowed tokens,
        min_tokens, logit_bias, then the penalties."""
        V = row.shape[0]
        if p.allowed_token_ids is not None:
            allowed = torch.tensor([t for t in p.allowed_token_ids if t < V], dtype=torch.long)
            kept = row[allowed]
            row.fill_(float("-inf"))
            row[allowed] = kept
        if len(output_ids) < p.min_tokens:  # nothing that would end the output may be picked yet
            ending = [t for t in (*p.stop_token_ids, *(() if p.ignore_eos else self.eos_ids)) if 0 <= t < V]
            if ending:
                index = torch.tensor(ending, dtype=torch.long)
                before = row[index].clone()
                row[index] = float("-inf")
                if not torch.isfinite(row).any():  # only ending tokens were allowed: min_tokens cannot hold
                    row[index] = before
        for token_id, bias in p.logit_bias:
            if token_id < V:
                row[token_id] += bias
        if p.repetition_penalty != 1.0 and (output_ids or prompt_ids):
            seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
            seen = seen[seen < V]
            values = row[seen]
            row[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if p.has_penalties and output_ids:
            _apply_penalties(row, p, output_ids)


def _apply_penalties(row: torch.Tensor, p: SamplingParams, output_ids: list[int]) -> None:
    """OpenAI semantics: subtract presence once per seen token, frequency per occurrence."""
    ids = torch.tensor(output_ids)
    counts = torch.bincount(ids, minlength=row.shape[0])[: row.shape[0]].to(row.dtype)
    row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)


def _top_k_top_p(rows: torch.Tensor, top_ks: list[int], top_ps: list[float], min_ps: list[float]) -> torch.Tensor:
    if all(k <= 0 for k in top_ks) and all(p >= 1.0 for p in top_ps) and all(m <= 0.0 for m in min_ps):
        return rows
    sorted_rows, order = rows.sort(dim=-1, descending=True)
    V = rows.shape[-1]
    ks = torch.tensor([min(k, V) if k > 0 else V for k in top_ks])[:, None]
    ranks = torch.arange(V)[None, :]
    drop = ranks >= ks
    ps = torch.tensor(top_ps, dtype=rows.dtype)[:, None]
    probs = torch.softmax(sorted_rows, dim=-1)
    drop |= (probs.cumsum(dim=-1) - probs) >= ps  # keep the token that crosses p
    drop |= probs < torch.tensor(min_ps, dtype=rows.dtype)[:, None] * probs[:, :1]  # min_p: against the top one
    drop[:, 0] = False  # the most likely token always stays (top_p=0 is greedy)
    sorted_rows = sorted_rows.masked_fill(drop, float("-inf"))
    return torch.empty_like(rows).scatter_(1, order, sorted_rows)
