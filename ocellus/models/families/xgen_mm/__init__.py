"""xGen-MM / BLIP-3 (the registry's "xgen_mm"): modeling.py (ViT on any-resolution views -> per-view perceiver
token sampler + projection -> decoder, a recipe's compose), checkpoint.py (key table after Salesforce's
vision_encoder / vision_tokenizer / lang_model names, config.json), processor.py (V_i * L tokens per image).
Its export's preprocessor_config.json is LLaVA-NeXT's (llava_next/processor.py: the same views)."""
