"""The KV cache: one tensor per layer for K and one for V, indexed by batch slot.

Layout per layer: ``[max_slots, kv_heads, capacity, head_dim]``, reserved whole at start as
anonymous memory. The system backs a page of it only once a step writes there, so a slot costs
what its request has written (rounded up to pages), not ``capacity`` tokens: a dense cache grown
to the longest request would hold every slot at that length (SmolLM2, 32 streams of a few hundred
tokens: ~160 MB more RSS with an fp8 cache). Reading a page never written gives zeros.

Running requests hold slots 0..n-1 (the scheduler keeps them dense), so decode attention reads
the view ``[:n, :, :length]`` without copying. ``ensure`` checks each step against the memory
budget as if every running slot were as long as the longest. A slot's pages go back to the
system when it is vacated or given to a new request, so what is resident is what the running
requests wrote, within that budget; when the engine idles, everything goes back.
"""

from __future__ import annotations

import mmap

import torch

from isvc.errors import ConfigError


class KVCacheFull(Exception):
    """A step would exceed the cache's memory budget."""


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_slots: int,
        max_len: int,
        dtype: torch.dtype,
        budget_bytes: int,
    ) -> None:
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.max_slots = max_slots
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        # No slot may ever be longer than the budget holds, so that bounds the reservation too.
        self.capacity = max(1, min(max_len, budget_bytes // self.bytes_per_slot_token))
        """Tokens per slot: the stride between slots' rows (fixed)."""
        self.num_slots = 0
        """Slots the last step used."""
        self.length = 0
        """The most tokens a step may have written into a slot since the engine last idled."""
        shape = (max_slots, num_kv_heads, self.capacity, head_dim)
        self._maps: list[mmap.mmap] = []
        self.k = [self._reserve(shape) for _ in range(num_layers)]
        self.v = [self._reserve(shape) for _ in range(num_layers)]

    @property
    def bytes_per_slot_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """An upper bound of the memory the cache holds: the running slots at the longest length written."""
        return self.num_slots * self.length * self.bytes_per_slot_token

    def ensure(self, num_slots: int, length: int) -> None:
        """Let a step write ``num_slots`` slots of up to ``length`` tokens; KVCacheFull over budget.
        Slots past ``num_slots`` that the last step used are vacated: their pages go back."""
        if num_slots * length * self.bytes_per_slot_token > self.budget_bytes or length > self.capacity:
            raise KVCacheFull(f"{num_slots} slots x {length} tokens exceed the KV cache budget")
        for slot in range(num_slots, self.num_slots):
            self.release(slot)
        self.num_slots, self.length = num_slots, max(self.length, length)

    def release(self, slot: int, keep: int = 0) -> None:
        """Give back the pages of ``slot`` past its first ``keep`` positions (they read as zeros after)."""
        itemsize, row = self.dtype.itemsize, self.capacity * self.head_dim * self.dtype.itemsize
        spans = (
            [(slot * self.num_kv_heads * row, (slot + 1) * self.num_kv_heads * row)]  # the slot is contiguous
            if keep == 0
            else [
                ((slot * self.num_kv_heads + h) * row + keep * self.head_dim * itemsize,
                 (slot * self.num_kv_heads + h + 1) * row)
                for h in range(self.num_kv_heads)
            ]
        )  # fmt: skip
        for start, end in spans:
            start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the span only
            end = end // mmap.PAGESIZE * mmap.PAGESIZE
            if end > start:
                for m in self._maps:
                    m.madvise(mmap.MADV_DONTNEED, start, end - start)

    def shrink(self) -> None:
        """Give every written page back to the system (called when the engine idles)."""
        if self.length == 0:  # nothing written since the last time
            return
        for m in self._maps:
            m.madvise(mmap.MADV_DONTNEED)  # an anonymous private mapping reads as zeros afterwards
        self.num_slots = self.length = 0

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy one slot's first ``length`` positions into another (slot compaction); what ``dst``'s last
        request wrote past ``length`` goes back. ``src`` is the last slot: the next ``ensure`` vacates it,
        or an admission releases it."""
        if length > 0:
            for cache in (self.k, self.v):
                for layer in cache:
                    layer[dst, :, :length].copy_(layer[src, :, :length])
        self.release(dst, keep=max(length, 0))

    def _reserve(self, shape: tuple[int, int, int, int]) -> torch.Tensor:
        size = shape[0] * shape[1] * shape[2] * shape[3] * self.dtype.itemsize
        try:
            memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zeros, backed when written
        except OSError as exc:
            raise ConfigError(
                f"cannot reserve {size * 2 * self.num_layers / 2**30:.1f} GiB of address space for the KV cache "
                f"({exc.strerror}); lower --max_num_seqs, --max_model_len or --kv_cache_space"
            ) from None
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a huge page would back 2 MB at the first write
            memory.madvise(mmap.MADV_NOHUGEPAGE)
        self._maps.append(memory)
        return torch.frombuffer(memory, dtype=self.dtype).view(shape)  # the tensor keeps the mapping alive
