"""InternVL (the registry's "internvl"): modeling.py (InternViT / a recipe's ViT -> pixel shuffle + MLP ->
decoder, a recipe's compose), checkpoint.py (key table, config.json), processor.py (dynamic tiling)."""
