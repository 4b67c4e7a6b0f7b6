"""ALBEF (the registry's "albef"): checkpoint.py (its own format: config.json, the model's own names, tied
keys); the model is models/contrastive/albef.py."""
