"""BLIP-2 / MiniGPT-4 (the registry's "blip2"): modeling.py (ViT -> Q-Former -> projection -> decoder, a
recipe's compose), checkpoint.py (fused-qkv layout, key table, config.json), processor.py (query slots)."""
