"""Structured outputs: each constrained request's grammar masks the tokens it may sample, step by step.

The server turns ``response_format`` / ``structured_outputs`` / ``guided_*`` into a
``StructuredOutput`` (params.py). ``Grammars.check`` turns it into a grammar the matcher reads and
refuses (InvalidRequest, a 400 naming the problem) one that cannot be built, before any work. At
admission each request gets its own matcher; every step the sampler fills a bitmask of the tokens
each constrained row may take next, masks that row's logits with it (so the output is valid by
construction, at any temperature), and the matcher consumes the token picked.

The grammar engine is llguidance (PyPI, no dependencies). Measured on this CPU with SmolLM2's
tokenizer at 32 concurrent JSON-schema streams (bench/grammar_masks.py): mask fill 1.0 ms per step
against xgrammar's 0.18 ms — both under 1 % of a 32-row decode step here — but a new schema's
grammar in 0.7 ms against xgrammar's 8 ms (on the request's way to its first token), and
xgrammar 0.2.8 requires triton (1 GB installed, for GPU kernels a CPU server never runs). Both
libraries' own CPU bitmask apply is slow (5.5 / 38 ms per step); ``apply_bitmask`` here is one
vectorized unpack.

JSON is written with ``", "`` and ``": "`` and no other whitespace (as ``json.dumps`` writes it),
as vLLM's ``disable_any_whitespace``: a small model allowed any whitespace can emit newlines until its
token budget runs out.
"""

from __future__ import annotations

import ctypes
import json
import threading
from functools import cache
from typing import Any

import torch

from isvc.engine.params import StructuredOutput
from isvc.errors import InvalidRequest

_JSON_DEFAULTS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_BITS = torch.arange(32, dtype=torch.int32)
FIRST_MATCHERS_KEPT = 64
"""Grammars whose first matcher is kept for copying (oldest dropped first)."""


class Grammars:
    """The grammar engine for one tokenizer: grammars from specs, and a matcher per request."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> None:
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos_ids = sorted(eos_ids)
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._first: dict[str, Any] = {}
        """An unused matcher per grammar, copied for each request (engine thread only)."""

    def _llg_tokenizer(self) -> Any:
        """llguidance's view of the vocabulary, built on first use (~0.4 s for a 49k vocabulary)."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos_ids or None
                )
            return self._tokenizer

    def check(self, spec: StructuredOutput) -> str:
        """The grammar for ``spec`` (llguidance's serialized form); InvalidRequest when it cannot be built.

        Blocking (a first call builds the tokenizer view): the server runs it off the event loop."""
        from llguidance import LLMatcher

        field = spec.source
        try:
            grammar = _grammar(spec)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidRequest(f"{field}: {_reason(exc)}", param=field) from None
        try:
            tokenizer = self._llg_tokenizer()
        except (ValueError, TypeError, RuntimeError) as exc:  # e.g. T5's plain Metaspace decoder
            raise InvalidRequest(
                f"{field}: structured outputs are not available for this model's tokenizer: {_reason(exc)}", param=field
            ) from None
        problem = _problem(LLMatcher, grammar, tokenizer)
        if problem:
            raise InvalidRequest(f"{field}: {problem}", param=field)
        return grammar

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for one request: a copy of the grammar's first matcher, which shares the
        lexer states every earlier request of that grammar built (a new one builds them again, and at
        32 streams its masks cost ~10 % of a step until they are built)."""
        from llguidance import LLMatcher

        first = self._first.get(grammar)
        if first is None:
            first = LLMatcher(self._llg_tokenizer(), grammar, log_level=0)
            if first.is_error():
                raise InvalidRequest(f"the output grammar cannot be used: {first.get_error()}", param="response_format")
            self._first[grammar] = first
            while len(self._first) > FIRST_MATCHERS_KEPT:
                self._first.pop(next(iter(self._first)))
        return first.deep_copy()

    def allocate(self, rows: int) -> torch.Tensor:
        """A bitmask [rows, ceil(vocab / 32)] int32: bit j of word w allows token 32 * w + j."""
        return torch.zeros(rows, (self.vocab_size + 31) // 32, dtype=torch.int32)

    def mask(self, logits: torch.Tensor, matchers: list[Any]) -> None:
        """Mask row i of ``logits`` [R, V], in place, to the tokens ``matchers[i]`` accepts next
        (a complete grammar accepts EOS alone)."""
        bitmask = self.allocate(len(matchers))
        for row, matcher in enumerate(matchers):
            fill_bitmask(matcher, bitmask, row)
        apply_bitmask(logits, bitmask)


def fill_bitmask(matcher: Any, bitmask: torch.Tensor, row: int) -> None:
    """Row ``row`` of ``bitmask``: the tokens ``matcher`` accepts next."""
    import llguidance.torch

    llguidance.torch.fill_next_token_bitmask(matcher, bitmask, row)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set to -inf, in place, every logit of ``logits`` [R, V] whose bit in ``bitmask`` [R, W] is 0.

    On the native kernel (one pass per row) when it builds here, else by unpacking the bits in torch."""
    R, V = logits.shape
    native = _native_apply()
    if native is not None and logits.dtype == torch.float32 and logits.is_contiguous() and bitmask.is_contiguous():
        native(logits.data_ptr(), bitmask.data_ptr(), R, V, bitmask.shape[1])
        return
    allowed = (bitmask.unsqueeze(-1) >> _BITS).bitwise_and_(1).view(R, -1)[:, :V]
    logits.masked_fill_(allowed == 0, float("-inf"))


@cache
def _native_apply() -> Any:
    from isvc.engine.kernels.build import bind, load

    lib = load()
    if lib is None:
        return None
    return bind(lib.isvc_apply_bitmask, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long])


def consume(matcher: Any, token_id: int) -> None:
    """Advance ``matcher`` past the token picked (always one it allowed, unless the model's vocabulary
    has tokens the tokenizer does not know)."""
    if not matcher.consume_token(token_id):
        raise RuntimeError(f"the output grammar rejected token {token_id}: {matcher.get_error()}")


def _grammar(spec: StructuredOutput) -> str:
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import GbnfToLarkError, gbnf_to_lark

    if spec.kind == "json":
        return str(LLMatcher.grammar_from_json_schema(json.loads(spec.spec), defaults=_JSON_DEFAULTS))
    if spec.kind == "json_object":
        return str(LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_DEFAULTS))
    if spec.kind == "regex":
        return str(LLMatcher.grammar_from_regex(spec.spec))
    if spec.kind == "choice":
        return str(LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choices)))
    # an EBNF grammar: GBNF (llama.cpp's, ``::=``, what xgrammar reads) or Lark (llguidance's own)
    try:
        text = gbnf_to_lark(spec.spec) if "::=" in spec.spec else spec.spec
    except GbnfToLarkError as exc:
        raise ValueError(f"not a GBNF grammar: {exc}") from None
    return str(LLMatcher.grammar_from_lark(text))


def _problem(matcher_class: Any, grammar: str, tokenizer: Any) -> str:
    """Why the grammar cannot be matched ("" when it can)."""
    return str(matcher_class.validate_grammar(grammar, tokenizer)).strip()


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
