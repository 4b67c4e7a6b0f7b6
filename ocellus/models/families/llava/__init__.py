"""LLaVA / LLaVA-1.5 (the registry's "llava"): modeling.py (assembly, a recipe's compose), checkpoint.py (key
table, config.json), processor.py (token counts from config.json; LLaVA-NeXT's processor too)."""
