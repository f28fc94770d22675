"""Prompt-lookup speculation: the drafts it proposes and the tokens a verification yields."""

from __future__ import annotations

from isvc.engine.params import SamplingParams
from isvc.engine.speculation import accepted, can_speculate, propose


def test_propose_continues_the_latest_match_of_the_longest_ngram():
    #            0  1  2  3  4  5  6  7  8  9 10
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert propose(tokens, 2) == [7, 8]  # the latest earlier "1 2 3" is followed by 7 8
    assert propose([5, 6, 7, 6], 3) == [7, 6]  # only a 1-gram matches; the draft stops at the end
    assert propose([1, 2, 3, 4], 3) == []  # nothing repeats
    assert propose(tokens, 0) == []


def test_accepted_takes_matching_drafts_then_the_models_token():
    assert accepted([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]  # all drafts right: a bonus token
    assert accepted([5, 6, 7], [5, 9, 1, 2]) == [5, 9]  # the first miss is replaced by the model's token
    assert accepted([5], [4, 3]) == [4]


def test_only_greedy_requests_without_logprobs_or_penalties_speculate():
    assert can_speculate(SamplingParams(max_tokens=8, temperature=0))
    assert not can_speculate(SamplingParams(max_tokens=8, temperature=0.7))
    assert not can_speculate(SamplingParams(max_tokens=8, temperature=0, logprobs=2))
    assert not can_speculate(SamplingParams(max_tokens=8, temperature=0, presence_penalty=0.5))
