"""Primitives shared by every model: norms, positions, attention, MLPs, masks, KV cache."""
from ocellus.nn.attention import Attention
from ocellus.nn.kv_cache import StaticKVCache
from ocellus.nn.masks import build_attention_mask
from ocellus.nn.mlp import GeluMLP, SwiGLU
from ocellus.nn.norms import LayerNorm, RMSNorm
from ocellus.nn.positional import sinusoidal_encoding
from ocellus.nn.rope import RopeConfig, RotaryEmbedding, apply_rotary

__all__ = [
    "Attention", "StaticKVCache", "build_attention_mask", "GeluMLP", "SwiGLU", "LayerNorm",
    "RMSNorm", "sinusoidal_encoding", "RopeConfig", "RotaryEmbedding", "apply_rotary",
]
