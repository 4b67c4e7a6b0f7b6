"""Tiny dual encoders for the contrastive unit tests (16px images, 40-token vocabulary)."""
import torch

from ocellus.models.contrastive.clip import build_dual_encoder

VISION = dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4)
TEXT = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=8, eos_token_id=1, pad_token_id=0)


def tiny_dual_encoder(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_dual_encoder(kind, VISION, TEXT, projection_dim=16)
