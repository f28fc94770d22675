"""Stop strings: find them in the generated text, trim them, and hold back what could start one."""

from __future__ import annotations


class StopChecker:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.max_len = max((len(s) for s in self.stops), default=0)

    def check(self, text: str, new_from: int) -> tuple[int, str] | None:
        """Where the earliest stop string starts, and which one, searching only text the new delta touched."""
        if not self.stops:
            return None
        begin = max(0, new_from - self.max_len + 1)
        hits = [(i, s) for i, s in ((text.find(s, begin), s) for s in self.stops) if i != -1]
        return min(hits, key=lambda hit: hit[0]) if hits else None

    def holdback(self, text: str) -> int:
        """How many trailing characters must wait: they may be the start of a stop string."""
        for n in range(min(self.max_len - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
