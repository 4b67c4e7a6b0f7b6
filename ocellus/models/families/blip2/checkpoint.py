"""BLIP-2 checkpoints: the key table, the tensor layout and config.json (the registry's Family).

BLIP-2's ViT checkpoint fuses q/k/v into `qkv` (the k bias is zero in the original, a trained tensor in
transformers) and stores class/position embeddings as [1, (P+1), D] parameters: `from_checkpoint` /
`to_checkpoint` convert, the key table maps names.
"""
from __future__ import annotations

import torch

from ocellus.models.families.bert.checkpoint import bert_layer_rules
from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.blip2.modeling import (
    ARCHITECTURE, BLIP2_VISION, MODEL_TYPES, OUR_ARCHITECTURE, Blip2, build_blip2, vision_hf_config, vision_kind)
from ocellus.models.families.decoder.checkpoint import decoder_rules

_LAYER = "vision_model.encoder.layers."


def from_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP-2 tensors -> names the key table maps one to one: qkv split into q/k/v projections,
    [1, 1, D] class and [1, P+1, D] position parameters reshaped to our [D] and embedding table."""
    out = {}
    for name, t in tensors.items():
        if name.startswith(_LAYER) and ".self_attn.qkv." in name:
            head, kind = name.rsplit(".qkv.", 1)                                       # kind: weight | bias
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                out[f"{head}.{proj}.{kind}"] = part                                    # [D, D] | [D]
        elif name == "vision_model.embeddings.class_embedding":
            out[name] = t.reshape(-1)                                                  # [1, 1, D] -> [D]
        elif name == "vision_model.embeddings.position_embedding":
            out[name + ".weight"] = t.reshape(-1, t.shape[-1])                         # [1, P+1, D] -> [P+1, D]
        else:
            out[name] = t
    return out


def to_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of from_checkpoint (q/k/v fused in transformers' order)."""
    out = {}
    for name, t in tensors.items():
        if name.startswith(_LAYER) and ".self_attn.q_proj." in name:
            head, kind = name.rsplit(".q_proj.", 1)
            out[f"{head}.qkv.{kind}"] = torch.cat([t, tensors[f"{head}.k_proj.{kind}"],
                                                   tensors[f"{head}.v_proj.{kind}"]])  # [3D, D] | [3D]
        elif name.startswith(_LAYER) and (".self_attn.k_proj." in name or ".self_attn.v_proj." in name):
            continue                                                                   # fused with q above
        elif name == "vision_model.embeddings.class_embedding":
            out[name] = t.reshape(1, 1, -1)
        elif name == "vision_model.embeddings.position_embedding.weight":
            out["vision_model.embeddings.position_embedding"] = t[None]                # [1, P+1, D]
        else:
            out[name] = t
    return out


BLIP2_KEYS = KeyMap(
    rules=(
        ("vision_tower.embeddings.{rest}", "vision_model.embeddings.{rest}"),
        ("vision_tower.pre_layernorm.{rest}", "vision_model.pre_layrnorm.{rest}"),      # CLIP towers (ours only)
        ("vision_tower.layers.{i}.self_attn.o_proj.{rest}", _LAYER + "{i}.self_attn.projection.{rest}"),
        ("vision_tower.layers.{i}.{rest}", _LAYER + "{i}.{rest}"),
        ("vision_tower.post_layernorm.{rest}", "vision_model.post_layernorm.{rest}"),
        ("vision_tower.head.{rest}", "vision_model.head.{rest}"),                     # SigLIP towers (ours only)
        ("qformer.query_tokens", "query_tokens"),
        ("qformer.layernorm.{rest}", "qformer.layernorm.{rest}"),
        *bert_layer_rules("qformer.layers.", "qformer.encoder.layer.", self_name="attention"),
        ("language_projection.{rest}", "language_projection.{rest}"),
        *decoder_rules("language_model.", "language_model.model.", "language_model.lm_head.weight"),
    ),
    drop=(r"rotary_emb\.inv_freq$", r"(^|\.)position_ids$"),
)


def blip2_hf_config(model: Blip2) -> dict:
    ours = vision_kind(model.vision_tower.config) != BLIP2_VISION
    out = {k: v for k, v in (getattr(model, "hf_config", None) or {}).items() if k not in ("torch_dtype",)}
    text = model.language_model.config.to_hf()
    text.pop("architectures", None)
    out.update(architectures=[OUR_ARCHITECTURE if ours else ARCHITECTURE], model_type=MODEL_TYPES[int(ours)],
               vision_config=vision_hf_config(model.vision_tower.config),
               qformer_config=model.qformer.config.to_hf(), text_config=text,
               num_query_tokens=model.num_query_tokens, image_token_index=model.image_token_id,
               use_decoder_only_language_model=True, qformer_part=model.qformer_part,
               image_wrap=list(model.image_wrap))
    if model.qformer_part == "connector" and not any(model.image_wrap):   # plain BLIP-2: transformers' keys only
        del out["qformer_part"], out["image_wrap"]
    return out


def blip2_tied(model: Blip2) -> tuple[str, ...]:
    return ("language_model.lm_head.weight",) if model.language_model.config.tie_word_embeddings else ()


def family(architecture: str | None = None):
    return Family(name="blip2", model_class=Blip2, build=build_blip2, keymap=BLIP2_KEYS, hf_config=blip2_hf_config,
                  tied=blip2_tied, from_checkpoint=from_checkpoint, to_checkpoint=to_checkpoint)
