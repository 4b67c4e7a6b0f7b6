"""Flamingo (the registry's "flamingo"): modeling.py (vision -> Perceiver -> gated cross-attention in the
decoder, the cache, a recipe's compose), checkpoint.py (key table, config.json), processor.py (one <image>
token per image)."""
