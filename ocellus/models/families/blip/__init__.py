"""BLIP (the registry's "blip"): checkpoint.py (its own format, ALBEF's layout); the model is
models/contrastive/blip.py."""
