"""LLaVA-NeXT (the registry's "llava_next"): modeling.py (LLaVA + the anyres packer, a recipe's compose),
checkpoint.py (LLaVA's key table + image_newline, config.json), processor.py (preprocessor_config.json of an
export). Its processor is LLaVA's (llava/processor.py counts the anyres canvases)."""
