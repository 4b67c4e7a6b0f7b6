"""BERT encoders (the registry's "bert"): checkpoint.py (key tables, builder, config.json); the model is
models/text/bert.py, whose BertLayer also serves the Q-Former and ALBEF / BLIP."""
