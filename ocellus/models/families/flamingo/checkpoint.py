"""Flamingo checkpoints (our own format: no transformers class): tensor names follow the LLaVA hub layout for
the vision tower and decoder (vision_tower.vision_model.*, language_model.model.*), and our module names for
perceiver.* and gated_cross_attn.{layer}.*; config.json as modeling.py's docstring describes."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.vit.checkpoint import vision_rules
from ocellus.models.families.decoder.checkpoint import decoder_rules
from ocellus.models.families.flamingo.modeling import ARCHITECTURE, MODEL_TYPES, Flamingo, build_flamingo

FLAMINGO_KEYS = KeyMap(
    rules=(
        *vision_rules("vision_tower.", "vision_tower.vision_model."),
        ("vision_tower.{rest}", "vision_tower.{rest}"),             # a ResNet tower: our names
        ("perceiver.{rest}", "perceiver.{rest}"),
        ("gated_cross_attn.{i}.{rest}", "gated_cross_attn.{i}.{rest}"),
        *decoder_rules("language_model.", "language_model.model.", "language_model.lm_head.weight"),
    ),
    drop=(r"(^|\.)embeddings\.position_ids$", r"rotary_emb\.inv_freq$"),
)


def flamingo_hf_config(model: Flamingo) -> dict:
    out = dict(getattr(model, "hf_config", {}) or {})
    perceiver = model.perceiver.config.to_dict()
    perceiver.pop("dim")  # the vision tower's width, not a free choice
    block = next(iter(model.gated_cross_attn.values()), None)
    layers = sorted(int(k) for k in model.gated_cross_attn)
    every = layers[0] + 1 if layers else out.get("cross_attn_every_n_layers", 1)
    out.update(architectures=[ARCHITECTURE], model_type=MODEL_TYPES[0], image_token_index=model.image_token_id,
               vision_feature_layer=model.feature_layer, vision_feature_select_strategy=model.feature_select,
               vision_config=model.vision_tower.config.to_hf(), text_config=model.language_model.config.to_hf(),
               perceiver_config=perceiver, cross_attn_every_n_layers=every)
    if block is not None:
        out["cross_attn_config"] = {"heads": block.attn.heads, "head_dim": block.attn.head_dim,
                                    "ff_mult": block.ff.mlp.fc1.out_features // block.ff.mlp.fc1.in_features}
    out["text_config"].pop("architectures", None)
    return out


def flamingo_tied(model: Flamingo) -> tuple[str, ...]:
    return ("language_model.lm_head.weight",) if model.language_model.config.tie_word_embeddings else ()


def family(architecture: str | None = None) -> Family:
    """The hub Family (ocellus/hub/families.py) of OcellusFlamingoForConditionalGeneration."""
    return Family(name="flamingo", model_class=Flamingo, build=build_flamingo, keymap=FLAMINGO_KEYS,
                  hf_config=flamingo_hf_config, tied=flamingo_tied)
