"""Static KV cache: one preallocated [B, H_kv, T_max, D] key and value buffer per layer.

Preallocating once avoids the re-allocation and copy of a growing `torch.cat` cache on every
decode step. All rows share one fill length (left padding keeps prompts aligned at the end),
so attention reads the view [:, :, :length + T] with no gather.
"""
from __future__ import annotations

import torch

from ocellus.errors import InputError


class StaticKVCache:
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 v_head_dim: int | None = None):
        shape_k = (batch_size, num_kv_heads, max_len, head_dim)
        shape_v = (batch_size, num_kv_heads, max_len, v_head_dim or head_dim)
        self.k = [torch.zeros(shape_k, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape_v, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0  # tokens already written (same for every layer once a forward finishes)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, H_kv, T, D] after the cached tokens; return all keys/values so far."""
        start, n = self.length, k.shape[2]
        if start + n > self.max_len:
            raise InputError(f"KV cache holds {self.max_len} tokens; writing {n} after {start} exceeds it")
        kc, vc = self.k[layer], self.v[layer]
        kc.narrow(2, start, n).copy_(k)  # narrow: one view op where [:, :, a:b] makes three (hot path)
        vc.narrow(2, start, n).copy_(v)
        return kc.narrow(2, 0, start + n), vc.narrow(2, 0, start + n)

    def advance(self, n: int) -> None:
        """Called once per model forward, after every layer wrote its n new tokens."""
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row b of the cache becomes row index[b]."""
        for buf in (*self.k, *self.v):
            buf[:, :, : self.length] = buf[index, :, : self.length]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))
