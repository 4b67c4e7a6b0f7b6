"""Qwen-VL v1 (the registry's "qwen_vl"): modeling.py (ViT -> resampler -> decoder, a recipe's compose),
checkpoint.py (key table, config.json), processor.py ("Picture n: <img>...</img>" markup)."""
