"""SigLIP (the registry's "siglip": SiglipModel, SiglipTextModel): checkpoint.py (builder, config.json, CLIP's key
tables); the model is models/contrastive/clip.py's DualEncoder with loss="sigmoid" (siglip_config)."""
