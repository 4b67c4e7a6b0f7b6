"""One initialisation for the parity tests' random reference models: attention far from uniform.

transformers' random init (N(0, 0.02) weights) makes a tiny model's attention scores ~0.03, so every
query attends almost uniformly and every activation is ~0.1: a transposed axis, a swapped pair of
rotary halves or a dropped gate then moves logits by ~1e-5, under the tests' tolerances (the Qwen2-VL
ViT with its 2D RoPE rows and columns swapped passed at 1e-4). Here every matrix (linear, conv,
embedding) is redrawn from N(0, 1 / fan_in), which keeps activations at unit scale through the layers,
so attention scores q.k / sqrt(d) have std ~1 and logits std ~1, and the query/key projections can be
scaled further by `qk_gain`. Measured on the Qwen2-VL case: parity error 6e-6, the rows/columns swap 1.1
(tolerance 1e-4). Biases and norms are left to `shift_biases_and_norms`, which every reference model calls.
"""
from __future__ import annotations

import math

import torch
from torch import nn

QK_NAMES = ("q_proj.weight", "k_proj.weight", "query.weight", "key.weight")
FUSED_QKV = ("qkv.weight",)


@torch.no_grad()
def spread_init(model: nn.Module, qk_gain: float = 1.0, seed: int = 0) -> nn.Module:
    """Redraw every >= 2-d parameter of `model` from N(0, 1/fan_in) (fan_in: all but the first dim, after
    dropping leading 1s, so a [1, N, D] table of learned tokens gets 1/D as an embedding table does),
    query/key projections (and the q, k thirds of a fused qkv) times qk_gain. Returns the model."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        shape = p.shape
        while len(shape) > 2 and shape[0] == 1:   # [1, N, D] token tables (query tokens, cls, positions)
            shape = shape[1:]
        fan_in = shape[1:].numel()
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) / math.sqrt(fan_in))
        if name.endswith(QK_NAMES):
            p.mul_(qk_gain)
        elif name.endswith(FUSED_QKV):
            third = p.shape[0] // 3
            p[:2 * third].mul_(qk_gain)
    return model


@torch.no_grad()
def shift_biases_and_norms(model: nn.Module, also: tuple[str, ...] = ()) -> nn.Module:
    """Add N(0, 0.1^2) (the global RNG: seed it first) to every bias, every norm parameter and every parameter
    whose name contains one of `also`: transformers starts them at 0 / 1 / constants, where a dropped bias or a
    norm read as identity would not move the logits. Returns the model."""
    for name, p in model.named_parameters():
        if name.endswith("bias") or "norm" in name.lower() or any(a in name for a in also):
            p.add_(torch.randn_like(p) * 0.1)
    return model


def padded(rows: list[list[int]], left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Id rows of different lengths -> input_ids and attention_mask [B, T], padded with 0 on the left (as
    generation wants) or the right."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        s = width - len(row) if left else 0
        ids[b, s:s + len(row)] = torch.tensor(row)
        mask[b, s:s + len(row)] = 1
    return ids, mask


def tiny_llava_towers(vision: str = "clip", text: str = "llama", tie: bool = False, max_positions: int = 256):
    """The vision config (CLIP or SigLIP: 3 layers, 32 px, patch 8) and the text config dict (2 layers, 48 wide,
    GQA 4/2, vocab 120) of the tiny LLaVA and LLaVA-NeXT references (NeXT is LLaVA plus anyres)."""
    import transformers as tf   # the oracle, imported only by the tests that build a reference
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8)
    vision_cfg = tf.CLIPVisionConfig(**vc, projection_dim=16) if vision == "clip" else tf.SiglipVisionConfig(**vc)
    text_cfg = dict(model_type=text, vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                    pad_token_id=0, eos_token_id=None, tie_word_embeddings=tie)
    return vision_cfg, text_cfg


def assert_logits_match_on_real_tokens(model, ref, got: dict, expected: dict, tol: float = 1e-5) -> None:
    """Our model on our processor's batch against the reference on its own (left-padded) batch: logits of the
    real tokens equal. Positions are passed to both: transformers' forward does not derive them from the mask."""
    pos = (got["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    keep = got["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(model(**got, position_ids=pos).logits[keep],
                                   ref(**expected, position_ids=pos).logits[keep], atol=tol, rtol=tol)
