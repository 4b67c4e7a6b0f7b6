"""Unified understanding + generation models, Ocellus' own format (the registry's "unified": Emu3, Janus, Show-o,
SEED-LLaMA): checkpoint.py (the Family); the models and their build_model are models/unified/."""
