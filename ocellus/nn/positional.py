"""Sinusoidal positional encoding (Vaswani et al. 2017, section 3.5):
PE[pos, 2i] = sin(pos / 10000^(2i/d)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
import torch


def sinusoidal_encoding(positions: torch.Tensor | int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """positions: int N (0..N-1) or a float/int tensor of any shape -> [..., dim]."""
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dim, got {dim}")
    if isinstance(positions, int):
        positions = torch.arange(positions)
    pos = positions.float().unsqueeze(-1)                                  # [..., 1]
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)    # [dim/2] = 1/10000^(2i/d)
    angles = pos * inv                                                     # [..., dim/2]
    out = torch.stack([angles.sin(), angles.cos()], dim=-1)                # [..., dim/2, 2] interleaved
    return out.flatten(-2)                                                 # [..., dim]
