"""LLaVA-OneVision (the registry's "llava_onevision"): modeling.py (LLaVA-NeXT's anyres model with the anyres_max_N
cap, videos refused), checkpoint.py (LLaVA-NeXT's key table, config.json), processor.py (LLaVA-NeXT's processor
counting the cap; one image per sample, no videos)."""
