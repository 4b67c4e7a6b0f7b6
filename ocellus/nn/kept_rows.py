"""The positions a layer still has to compute for: in training, the last decoder layer's output
matters only where a label is trained (image placeholders and prompts, most of a VLM's
sequence, feed nothing but logits the loss ignores). That layer makes keys and values at every
position but queries, attention, projections and MLP only at the kept ones.

Kept positions are ragged per sample; attention wants a rectangle, so each sample's kept
positions are packed to the front of an [B, N_max] table; the padding slots after them hold
unkept positions (real positions, so their causal mask rows are never empty) and are dropped
afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KeptRows:
    flat: torch.Tensor        # [N] indices into B*T, row-major (sample, then position)
    pos: torch.Tensor         # [B, N_max] each sample's kept positions, ascending, then padding
    packed: torch.Tensor      # [N] indices into B*N_max of the real (non-padding) slots

    @classmethod
    def from_mask(cls, keep: torch.Tensor) -> "KeptRows":
        """keep [B, T] bool."""
        B, T = keep.shape
        counts = keep.sum(1)                                                       # [B]
        n_max = int(counts.max()) if B else 0
        pos = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :n_max]  # kept first
        real = torch.arange(n_max, device=keep.device)[None, :] < counts[:, None]       # [B, N_max]
        return cls(flat=keep.flatten().nonzero().squeeze(1), pos=pos,
                   packed=real.flatten().nonzero().squeeze(1))

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """x [B|1, T, ...] -> [B, N_max, ...] at the kept positions."""
        x = x.expand(self.pos.shape[0], *x.shape[1:])
        index = self.pos.view(*self.pos.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, index)

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """y [B, N_max, ...] -> [N, ...]: the real slots, in `flat` order."""
        return y.flatten(0, 1).index_select(0, self.packed)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, ...] -> [N, ...] at the kept positions."""
        return x.flatten(0, 1).index_select(0, self.flat)

    def query_mask(self, mask: torch.Tensor | None, kv_len: int) -> torch.Tensor:
        """The [B, 1, N_max, T_k] boolean mask for queries at the kept positions: the rows of
        `mask` ([B|1, 1, T, T_k], True = may attend), or plain causal when it is None."""
        if mask is None:
            k_pos = torch.arange(kv_len, device=self.pos.device)
            return (k_pos[None, None, None, :] <= self.pos[:, None, :, None])           # [B, 1, N_max, T_k]
        B, n_max = self.pos.shape
        mask = mask.expand(B, 1, mask.shape[2], kv_len)
        return mask.gather(2, self.pos[:, None, :, None].expand(B, 1, n_max, kv_len))
