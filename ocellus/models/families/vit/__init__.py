"""CLIP / SigLIP image towers (the registry's "vit": CLIPVisionModel, SiglipVisionModel): checkpoint.py (key
tables, builder, load_vision / save_vision); the model is models/vision/vit.py, shared with every family that
builds on a ViT (vision_rules: the tower's names inside a composite checkpoint)."""
