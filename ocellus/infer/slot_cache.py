"""A KV cache with B slots whose rows join and leave between decode steps (continuous batching).

Continuous batching (Yu et al. 2022, "Orca: iteration-level scheduling"; vLLM and
text-generation-inference's router are the reference servers) lets a request enter the running
decode batch as soon as a slot is free and leave it the moment it finishes, instead of waiting
for the whole batch. vLLM does this with a paged cache; we keep the static, preallocated layout of
`nn/kv_cache.StaticKVCache` so the decoder's attention path stays exactly the one `generate` uses:

    k[layer]: [S, H_kv, T_max, D]   rows 0..active-1 are in use (kept packed at the front)
    length                          the shared write column: every live row ends there
    fill[i]                         row i's tokens sit right-aligned in [length - fill[i], length)

Left of a row's tokens is padding, masked out by `attention_mask()` ([B, length + 1], the new
token included), exactly like a left-padded batch in `generate`; each row brings its own
position ids, so RoPE sees the row's real positions wherever its keys sit in the buffer.
Attention is order-free over keys given the mask, which is what makes the moves below legal:

- `insert`: a request prefilled on its own (batch 1, `StaticKVCache`) is copied into the next
  free row, right-aligned at `length`; a prompt longer than `length` first shifts every row right.
- `remove`: the last live row is moved into the freed one, so live rows stay a prefix and a
  decode step runs on exactly `active` rows (views [:active], no gather).
- `compact`: when `length` reaches T_max (or too much of every row is padding) all rows are
  shifted so the longest one starts at column 0.

The decoder sees the usual cache interface: `update(layer, k, v)`, `advance(n)`, `length`.

M-RoPE models (Qwen2-VL): their prefilled cache also holds each row's rope delta (max M-RoPE id + 1 - tokens,
models/families/qwen2_vl/modeling.py), which a decode step adds to the row's plain position. The slot cache keeps one
delta per live row, moved with the row, and shows them as `rope_deltas` [active, 1] as the model's own cache does.
"""
from __future__ import annotations

import torch

from ocellus.errors import ConfigError, InputError
from ocellus.nn.kv_cache import StaticKVCache


class SlotKVCache:
    def __init__(self, num_layers: int, slots: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 v_head_dim: int | None = None):
        if slots < 1 or max_len < 2:
            raise ConfigError(f"a slot cache needs >= 1 slot and max_len >= 2, got slots={slots} max_len={max_len}")
        self.k = [torch.zeros(slots, num_kv_heads, max_len, head_dim, dtype=dtype, device=device)
                  for _ in range(num_layers)]
        self.v = [torch.zeros(slots, num_kv_heads, max_len, v_head_dim or head_dim, dtype=dtype, device=device)
                  for _ in range(num_layers)]
        self.slots, self.max_len = slots, max_len
        self.length = 0
        self.fill: list[int] = []  # one entry per live row
        self.deltas: list[int] | None = None  # M-RoPE models: each live row's rope delta (see the docstring)

    @classmethod
    def like(cls, model, slots: int, max_len: int) -> "SlotKVCache":
        """A slot cache shaped like the `StaticKVCache` the model itself makes."""
        probe = model.new_cache(1, 1)
        mrope = isinstance(probe, StaticKVCache) and hasattr(probe, "rope_deltas")  # Qwen2-VL's MRopeKVCache
        if type(probe) is not StaticKVCache and not mrope:
            raise ConfigError(f"{type(model).__name__} keeps its decode state in a {type(probe).__name__}, not a plain "
                              f"StaticKVCache; continuous batching serves decoders whose state is keys and values only "
                              f"(Llama-family LMs, LLaVA-style VLMs)")
        k0, v0 = probe.k[0], probe.v[0]
        cache = cls(len(probe.k), slots, k0.shape[1], max_len, k0.shape[3], dtype=k0.dtype, device=k0.device,
                    v_head_dim=v0.shape[3])
        cache.deltas = [] if mrope else None
        return cache

    @property
    def rope_deltas(self) -> torch.Tensor | None:
        """[active, 1] each live row's M-RoPE delta (None for a plain decoder)."""
        if self.deltas is None:
            return None
        return torch.tensor(self.deltas, dtype=torch.long, device=self.k[0].device)[:, None]

    @rope_deltas.setter
    def rope_deltas(self, value) -> None:
        raise InputError("a slot cache's rope deltas come from the prefilled caches inserted into it; a forward "
                         "over the slot cache must be a decode step, not a prefill")

    @property
    def active(self) -> int:
        return len(self.fill)

    @property
    def free(self) -> int:
        return self.slots - self.active

    # -- the decoder's interface ----------------------------------------------------------------
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [active, H_kv, n, D] at the shared column; return the live rows' keys/values so far."""
        B, n = k.shape[0], k.shape[2]
        if B != self.active:
            raise InputError(f"slot cache has {self.active} live rows, the forward passed {B}")
        if self.length + n > self.max_len:
            raise InputError(f"slot cache holds {self.max_len} tokens; writing {n} after {self.length} exceeds it "
                             f"(call make_room first)")
        kc, vc = self.k[layer][:B], self.v[layer][:B]
        kc.narrow(2, self.length, n).copy_(k)
        vc.narrow(2, self.length, n).copy_(v)
        return kc.narrow(2, 0, self.length + n), vc.narrow(2, 0, self.length + n)

    def advance(self, n: int) -> None:
        self.length += n
        self.fill = [f + n for f in self.fill]

    def attention_mask(self, device=None) -> torch.Tensor:
        """[active, length + 1] 1 where a row has a token (the one being decoded included), 0 = padding."""
        cols = torch.arange(self.length + 1, device=device)[None, :]                  # [1, L+1]
        starts = torch.tensor([self.length - f for f in self.fill], device=device)[:, None]  # [B, 1]
        return (cols >= starts).long()                                                # [B, L+1]

    # -- joining and leaving ---------------------------------------------------------------------
    def insert(self, prefilled: StaticKVCache, row: int = 0) -> int:
        """Copy row `row` of a prefilled cache (its `length` tokens) into the next free slot; -> its index."""
        n = prefilled.length
        if self.free == 0:
            raise InputError("slot cache is full: no free slot to insert into")
        if n >= self.max_len:
            raise InputError(f"a prompt of {n} tokens leaves no room to decode in a {self.max_len}-token slot")
        if n > self.length:
            self._realign(n)          # every live row moves right so the new one fits before `length`
        i = self.active
        for layer in range(len(self.k)):
            self.k[layer][i, :, self.length - n:self.length] = prefilled.k[layer][row, :, :n]
            self.v[layer][i, :, self.length - n:self.length] = prefilled.v[layer][row, :, :n]
        self.fill.append(n)
        if self.deltas is not None:
            self.deltas.append(int(prefilled.rope_deltas[row]) if prefilled.rope_deltas is not None else 0)
        return i

    def remove(self, i: int) -> int | None:
        """Free row i. The last live row moves into it: -> the index it moved from (None when i was last)."""
        last = self.active - 1
        if not 0 <= i <= last:
            raise InputError(f"no live row {i} (live rows: {self.active})")
        moved = None
        if i != last:
            start = self.length - self.fill[last]
            for buf in (*self.k, *self.v):
                buf[i, :, start:self.length] = buf[last, :, start:self.length]
            self.fill[i] = self.fill[last]
            if self.deltas is not None:
                self.deltas[i] = self.deltas[last]
            moved = last
        self.fill.pop()
        if self.deltas is not None:
            self.deltas.pop()
        if not self.fill:
            self.length = 0
        elif self.length - max(self.fill) > self.max_len // 4:
            self._realign(max(self.fill))  # every row is mostly padding: stop attending over it
        return moved

    def make_room(self, n: int = 1) -> None:
        """Before a decode step writing n tokens: compact when the shared column would run off the end."""
        if self.length + n <= self.max_len:
            return
        longest = max(self.fill)
        if longest + n > self.max_len:
            raise InputError(f"a row holds {longest} tokens: {n} more exceed the slot length {self.max_len}")
        self._realign(longest)

    def _realign(self, new_length: int) -> None:
        """Move every live row so that it ends at `new_length` (>= its fill)."""
        if new_length == self.length:
            return
        for buf in (*self.k, *self.v):
            for i, f in enumerate(self.fill):
                # clone: source and destination windows of one row may overlap
                buf[i, :, new_length - f:new_length] = buf[i, :, self.length - f:self.length].clone()
        self.length = new_length

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))
