"""Incremental detokenization: text deltas per new token, safe across multi-byte characters.

A token can end in the middle of a UTF-8 character (common for Chinese and emoji with
byte-level BPE); decoding it alone gives U+FFFD. We decode a short window before and
after the new token and emit only the difference, holding back while the tail is
still an incomplete character.
"""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-6:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip_special)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip_special)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            if self.prefix_offset > 64:  # keep the window short
                cut = self.prefix_offset - 6
                self.ids = self.ids[cut:]
                self.prefix_offset -= cut
                self.read_offset -= cut
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is held back at the end (an incomplete character is emitted as is)."""
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip_special)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip_special)
        return full[len(prefix) :] if len(full) > len(prefix) else ""
