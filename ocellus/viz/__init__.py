"""Visualisations: attention heat maps over image patches (attention_map.py)."""
from ocellus.viz.attention_map import AttentionMap, AttentionRecorder, answer_attention, explain, overlay

__all__ = ["AttentionMap", "AttentionRecorder", "answer_attention", "explain", "overlay"]
