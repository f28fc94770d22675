"""Prompt-lookup speculative decoding: draft tokens by n-gram match, verify them in one step.

A single stream is bound by reading every weight once per token (538 MB for SmolLM2 in
fp32). Verifying k drafted tokens costs one step with k + 1 rows, which reads the weights
once as well, so each accepted draft is a token for a fraction of a step. Drafts come from
the request's own text (vLLM's "ngram" method): the tokens that followed the most recent
earlier occurrence of the last n tokens. Chat answers repeat their prompt's words and
their own phrases often enough: on the bench prompts 37 % of drafts are accepted at k = 3,
and a single stream goes from 40 to 53 tok/s (engine only).

Only for greedy requests without logprobs or penalties (structured outputs included), and only in small batches: at
temperature 0 a row's logits are computed exactly as in a plain decode step (the kernels
are row-independent), so the accepted tokens are the very tokens greedy decoding yields;
in a large batch the step is compute-bound and rejected drafts would cost real time.
"""

from __future__ import annotations

from isvc.engine.params import SamplingParams

MAX_NGRAM = 3
WINDOW = 1024  # tokens searched back from the end


def can_speculate(params: SamplingParams) -> bool:
    """Greedy, no logprobs, no shaping but a grammar's (drafts of a constrained request are checked
    position by position against its grammar: ``Sampler.verify``)."""
    return params.greedy and params.logprobs is None and not params.shapes_beyond_grammar


def propose(tokens: list[int], k: int) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier match of the last n tokens (n = 3..1)."""
    if k <= 0:
        return []
    start = max(0, len(tokens) - WINDOW)
    for n in range(MAX_NGRAM, 0, -1):
        if len(tokens) - start <= n:
            continue
        pattern = tokens[-n:]
        for s in range(len(tokens) - n - 1, start - 1, -1):
            if tokens[s : s + n] == pattern:
                return tokens[s + n : s + n + k]
    return []


def accepted(drafts: list[int], targets: list[int]) -> list[int]:
    """The tokens a verification step yields: matching drafts, then the first target after them.

    ``targets[j]`` is the greedy token after the prefix plus drafts[:j].
    """
    n = 0
    while n < len(drafts) and targets[n] == drafts[n]:
        n += 1
    return targets[: n + 1]
