"""Short documents for the embeddings bench: deterministic, unique, 10-60 words, English-like.

Every run gets the same documents in the same order (a seeded generator), so runs and servers
compare on identical inputs; no two documents are equal, so no cache can answer for a server.
"""

from __future__ import annotations

import random

MIN_WORDS, MAX_WORDS = 10, 60

SUBJECTS = (
    "The river", "A small bakery", "Our support team", "The new library", "Every morning the train",
    "The city council", "A quiet student", "The old lighthouse", "This recipe", "The research group",
    "A local farmer", "The museum", "Her grandfather", "The football club", "A software engineer",
    "The weather service", "The hotel", "A young doctor", "The mountain village", "The orchestra",
)  # fmt: skip
VERBS = (
    "announced", "described", "repaired", "painted", "measured", "explained", "opened", "planned",
    "recorded", "delivered", "studied", "shared", "built", "tested", "published", "moved",
)  # fmt: skip
OBJECTS = (
    "a bridge across the valley", "fresh bread for the market", "the results of the survey",
    "an exhibition about ancient coins", "a faster route to the airport", "the schedule for next week",
    "a garden behind the school", "new instruments for the concert", "the history of the harbour",
    "a report on water quality", "three chapters of the novel", "a map of the hiking trails",
    "the cost of the repairs", "a festival in the main square", "software for the clinic",
    "a warning about strong winds", "the price of train tickets", "a recipe for lemon cake",
)  # fmt: skip
TAILS = (
    "after months of careful work", "before the winter arrived", "with help from volunteers",
    "despite the heavy rain", "for the first time in years", "during the long weekend",
    "while visitors watched", "to everyone's surprise", "on a very tight budget", "as promised last spring",
)  # fmt: skip
CONNECTORS = ("Then", "Later", "Meanwhile", "Afterwards", "In addition", "However", "Finally", "Still")

QUERIES = (
    "When does the museum open?", "How much do train tickets cost?", "Who repaired the bridge?",
    "What did the research group publish?", "Where is the festival?", "What is the weather warning?",
    "How do I bake lemon cake?", "What is in the survey results?",
)  # fmt: skip


def _sentence(rng: random.Random, first: bool) -> str:
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
    if not first:
        words = f"{rng.choice(CONNECTORS)} {words[0].lower()}{words[1:]}"
    return words + "."


def build_documents(count: int, seed: int = 11) -> list[str]:
    """``count`` unique documents of 10-60 words each, the same ones for the same arguments."""
    rng = random.Random(seed)
    seen: set[str] = set()
    docs: list[str] = []
    while len(docs) < count:
        target = rng.randint(MIN_WORDS, MAX_WORDS)
        words: list[str] = []
        while len(words) < target:
            words += _sentence(rng, first=not words).split()
        words = words[:target]
        if not words[-1].endswith("."):
            words[-1] += "."
        doc = " ".join(words)
        if doc not in seen:
            seen.add(doc)
            docs.append(doc)
    return docs


def rerank_requests(count: int, docs_per_query: int, seed: int = 12) -> list[tuple[str, list[str]]]:
    """``count`` (query, documents) rerank requests; each request's documents are unique in the run."""
    docs = build_documents(count * docs_per_query, seed)
    return [(QUERIES[i % len(QUERIES)], docs[i * docs_per_query : (i + 1) * docs_per_query]) for i in range(count)]
