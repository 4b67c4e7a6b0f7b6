"""Llama / Qwen2 / Mistral / Qwen3 decoder LMs (the registry's "decoder"): checkpoint.py (key table, builder,
config.json); the model itself is models/text/decoder.py, shared with every family built on it."""
