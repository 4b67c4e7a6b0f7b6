"""Qwen2-VL / Qwen2.5-VL (the registry's "qwen2_vl", recipe names qwen2_vl and qwen2_5_vl): modeling.py
(native-resolution ViT -> merger -> decoder with M-RoPE, a recipe's compose), checkpoint.py (key table,
config.json), processor.py (dynamic resolution, videos), packing.py (M-RoPE ids per packed document), tower.py (a vision tower saved alone: the registry's "qwen2_vit")."""
