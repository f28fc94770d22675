"""Preprocessing off the event loop: one small pool of threads for chat template renders and tokenizing.

Rendering and tokenizing are short and bounded, but a long prompt still takes milliseconds of
pure CPU: run on the loop, it would hold every other request (health checks, live streams) for
that long. Short texts stay on the loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# NOTE: one small pool for the process: rendering and tokenizing are short, and bounded,
# so two threads keep the loop free without letting a burst of renders take every core.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="isvc-preprocess")

INLINE_ENCODE_CHARS = 4096
"""Texts up to this size are tokenized on the loop: well under a millisecond, less than a thread hop."""


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking preprocessing step (render, tokenize) on the pool."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)


async def encode_all(tokenizer: Any, texts: list[str], *, add_special_tokens: bool = True) -> list[list[int]]:
    """Tokenize prompts without holding the event loop for more than a short text's worth."""
    encode = lambda: [list(tokenizer.encode(t, add_special_tokens=add_special_tokens)) for t in texts]
    if sum(len(t) for t in texts) <= INLINE_ENCODE_CHARS:
        return encode()
    return await off_loop(encode)
