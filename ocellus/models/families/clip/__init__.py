"""CLIP (the registry's "clip": CLIPModel, CLIPTextModel, CLIPTextModelWithProjection): checkpoint.py (key
tables, builders, config.json); the model is models/contrastive/clip.py (DualEncoder), shared with SigLIP."""
