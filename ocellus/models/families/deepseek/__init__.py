"""DeepSeek-V2 / V3 (the registry's "deepseek"): checkpoint.py (the Family: Llama's key table, the builder, the
multi-token-prediction layers skipped); the model is models/text/deepseek.py."""
