"""Vision encoders: the ViT of CLIP / SigLIP (vit.py)."""
from ocellus.models.vision.vit import ViTClassifier, ViTConfig, VisionOutput, VisionTransformer

__all__ = ["ViTConfig", "VisionTransformer", "VisionOutput", "ViTClassifier"]
