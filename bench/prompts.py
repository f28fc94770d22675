"""A fixed, deterministic prompt set: chat questions of roughly 20 to 200 tokens (no data set download)."""

from __future__ import annotations

import random

_TOPICS = [
    "the ocean",
    "a small town bakery",
    "learning to play the piano",
    "the history of bridges",
    "how bees make honey",
    "a trip to the mountains",
    "why the sky is blue",
    "growing tomatoes",
    "the first computers",
    "a rainy afternoon",
    "training for a marathon",
    "the moon landing",
    "cooking rice",
    "the life of a lighthouse keeper",
    "how trains work",
    "a friendly robot",
]
_FILLER = [
    "Please be specific and give concrete examples.",
    "Keep the tone friendly and simple.",
    "Imagine you are explaining this to a curious twelve-year-old.",
    "Mention at least one surprising fact.",
    "Use short paragraphs.",
    "Avoid jargon where you can.",
    "End with a short summary sentence.",
    "Compare it with something from everyday life.",
    "Think about what a beginner would ask next.",
    "Describe the sounds, colours and smells if they matter.",
]


def build_prompts(count: int = 64, seed: int = 7) -> list[str]:
    """Prompt i has about 20 + (i * 29 % 180) tokens of instructions; the same list every run."""
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        target_words = 14 + (i * 29) % 140  # ~1.3 tokens per word -> ~20..200 tokens
        words = f"Write about {_TOPICS[i % len(_TOPICS)]}.".split()
        while len(words) < target_words:
            words += rng.choice(_FILLER).split()
        prompts.append(" ".join(words[:target_words]))
    return prompts


def request_prompt(prompts: list[str], serial: int) -> str:
    """The prompt of the run's request number ``serial``: unique in the run.

    The set repeats across concurrency levels; a server with prefix caching would otherwise
    answer repeats from its cache. Numbering each request keeps only what distinct users
    share (the chat template's system prompt) reusable.
    """
    return f"Request {serial}. {prompts[serial % len(prompts)]}"
