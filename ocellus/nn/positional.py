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


def resize_grid(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A position table of a square G x G grid, [G*G, D] row-major -> [h*w, D] for an h x w grid,
    resized bicubically (DINO's recipe for ViT position embeddings at another resolution, the one
    transformers uses; Qwen-VL's get_abs_pos). The table itself when (h, w) = (G, G)."""
    g, D = round(table.shape[0] ** 0.5), table.shape[-1]
    h, w = size
    if g * g != table.shape[0]:
        raise ValueError(f"resize_grid needs a square grid's table, got {table.shape[0]} rows")
    if (h, w) == (g, g):
        return table
    grid = table.reshape(1, g, g, D).permute(0, 3, 1, 2)                   # [1, D, G, G]
    grid = torch.nn.functional.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)  # [1, D, h, w]
    return grid.permute(0, 2, 3, 1).reshape(h * w, D)                      # [h*w, D]
