"""BLIP-2 (Li et al. 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders
and Large Language Models"), stage 2 and inference: frozen ViT -> Q-Former (learned queries
cross-attending to the image) -> `language_projection` (one linear layer) -> soft visual prompt for a
frozen decoder LM. MiniGPT-4 (Zhu et al. 2023) is the same model with the Q-Former counted as part of
the frozen visual encoder, so only the linear layer trains (`qformer_part="vision"`).

Matches transformers' Blip2ForConditionalGeneration with a decoder-only text_config (Llama / Qwen2
here; OPT and T5 are not implemented): logits, generated ids, and checkpoints both ways
(tests/parity/test_blip2_parity.py). transformers 5 writes the query outputs at the
`image_token_index` placeholder positions of the prompt (the processor expands each image into
num_query_tokens placeholders), which is the layout implemented here; the older "prepend the
queries before the prompt" layout is that with the placeholders first.

BLIP-2's ViT (EVA-CLIP in the paper) is our VisionTransformer with CLS, no pre-norm, `post_layernorm`
over the whole sequence and a patch conv with bias (`vision_config`); its checkpoint layout is checkpoint.py's.

Recipes compose BLIP-2 on a CLIP or SigLIP tower (the shapes ViT): transformers cannot express that,
so such a model saves as our own "OcellusBlip2ForConditionalGeneration" (model_type ocellus_blip2),
same names plus CLIP's `pre_layrnorm`; `ocellus.load` opens both. The processor: processor.py.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ocellus.data.templates import MINIGPT4_SYSTEM
from ocellus.errors import ConfigError, InputError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.families.common import config_image_token, text_config
from ocellus.models.fusion import splice
from ocellus.models.generates import GeneratesWithDecoder
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

ARCHITECTURE, OUR_ARCHITECTURE = "Blip2ForConditionalGeneration", "OcellusBlip2ForConditionalGeneration"
MODEL_TYPES = ("blip-2", "ocellus_blip2")
BLIP2_VISION = "blip_2_vision_model"
# transformers' Blip2VisionConfig defaults (EVA ViT-g/14), for fields a config.json leaves out
_VISION_DEFAULTS = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                        image_size=224, patch_size=14, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-6,
                        qkv_bias=True)


class Blip2(GeneratesWithDecoder):
    """vision_tower -> qformer (queries + layers) -> language_projection -> spliced into language_model's
    input embeddings at the image placeholder positions (num_query_tokens per image)."""

    def __init__(self, vision_tower: VisionTransformer, qformer: QFormer, language_projection: nn.Linear,
                 language_model: DecoderLM, image_token_id: int, qformer_part: str = "connector"):
        super().__init__()
        if qformer_part not in ("connector", "vision"):
            raise ConfigError(f"qformer_part must be 'connector' (BLIP-2) or 'vision' (MiniGPT-4), got {qformer_part!r}")
        self.vision_tower = vision_tower
        self.qformer = qformer
        self.language_projection = language_projection
        self.attach_decoder(language_model)
        self.image_token_id = image_token_id
        self.qformer_part = qformer_part

    def parts(self) -> dict[str, nn.Module]:
        """Training stages address these. BLIP-2 stage 2 trains the connector = Q-Former (with its
        queries) + projection; MiniGPT-4 counts the Q-Former as vision, so its connector is the linear layer."""
        if self.qformer_part == "vision":
            return {"vision": nn.ModuleList([self.vision_tower, self.qformer]),
                    "connector": self.language_projection, "llm": self.language_model}
        return {"vision": self.vision_tower, "connector": nn.ModuleList([self.qformer, self.language_projection]),
                "llm": self.language_model}

    @property
    def num_query_tokens(self) -> int:
        return self.qformer.config.num_query_tokens

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """The engine's generate; a batch in transformers' Blip2Processor layout, [image tokens, pads, BOS, text]
        (processor.py), decodes with its pads moved in front: the same tokens, as pads are never attended and
        positions count real tokens only (cumsum of the mask, as transformers' generate). The returned ids
        start with the prompt as given, as transformers' do."""
        if input_ids is None and kwargs.get("pixel_values") is not None and kwargs.get("inputs_embeds") is None:
            input_ids = self._caption_prompt(kwargs["pixel_values"])
        order = _pads_first_order(input_ids, attention_mask, self.image_token_id)
        if order is None:
            return super().generate(input_ids, attention_mask=attention_mask, **kwargs)
        out = super().generate(input_ids.gather(1, order), attention_mask=attention_mask.gather(1, order), **kwargs)
        out = out.clone()
        out[:, :input_ids.shape[1]] = input_ids.repeat_interleave(out.shape[0] // input_ids.shape[0], dim=0)
        return out

    def _caption_prompt(self, pixel_values) -> torch.Tensor:
        """No prompt (captioning): each image's query tokens then BOS, transformers' Blip2 generate's prompt."""
        bos = self.config.bos_token_id
        if bos is None:
            raise ConfigError("generating without input_ids starts each caption at BOS, but text_config has no "
                              "bos_token_id; pass input_ids")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise InputError(f"pixel_values must be [num_images, 3, H, W], got {getattr(pixel_values, 'shape', None)}")
        row = torch.tensor([[self.image_token_id] * self.num_query_tokens + [bos]], device=pixel_values.device)
        return row.repeat(pixel_values.shape[0], 1)                                    # [N, Q + 1]

    # -- forward --------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """pixel_values [N, 3, H, W] -> [N, Q, D_llm]: the soft visual prompt of each image."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise InputError(f"pixel_values must be [num_images, 3, H, W], got {getattr(pixel_values, 'shape', None)}")
        dtype = next(self.vision_tower.parameters()).dtype
        image = self.vision_tower(pixel_values.to(dtype), interpolate_pos_encoding=interpolate_pos_encoding)
        queries = self.qformer(image.last_hidden_state)                                  # [N, Q, Dq]
        return self.language_projection(queries)                                        # [N, Q, D]

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache=None, logits_to_keep: int = 0,
                inputs_embeds: torch.Tensor | None = None, interpolate_pos_encoding: bool = False, **kwargs):
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("pass input_ids (with num_query_tokens image placeholders per image) or inputs_embeds")
            inputs_embeds = self.language_model.embed_tokens(input_ids)                  # [B, T, D]
            if pixel_values is not None:
                feats = self.image_features(pixel_values, interpolate_pos_encoding)      # [N, Q, D]
                inputs_embeds = splice(inputs_embeds, input_ids, self.image_token_id, feats.flatten(0, 1),
                                       tokens_per_image=[feats.shape[1]] * feats.shape[0])
            elif (cache is None or cache.length == 0) and bool((input_ids == self.image_token_id).any()):
                raise InputError(f"input_ids hold image tokens (id {self.image_token_id}) but no pixel_values were given")
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, labels=labels, cache=cache,
                                   logits_to_keep=logits_to_keep, **kwargs)


def _pads_first_order(input_ids, attention_mask, image_token_id: int) -> torch.Tensor | None:
    """[B, T] gather indices that move each row's pads in front (real tokens keep their order) when the batch is
    in Blip2Processor's layout: every row ends on a real token, and real tokens before a pad are all image tokens.
    None for anything else (the engine's own checks then apply)."""
    if not isinstance(input_ids, torch.Tensor) or not isinstance(attention_mask, torch.Tensor) \
            or attention_mask.shape != input_ids.shape or input_ids.dim() != 2:
        return None
    mask = attention_mask.long()
    if not bool((mask[:, 1:] < mask[:, :-1]).any()) or not bool((mask[:, -1] == 1).all()):
        return None   # already left-padded (or right-padded: refused by the engine as for every model)
    last_pad = (mask == 0).long().cumsum(-1).argmax(-1, keepdim=True)              # [B, 1] (0 in rows without)
    before_last_pad = torch.arange(mask.shape[1], device=mask.device) < last_pad     # [B, T]
    if bool(((mask == 1) & before_last_pad & (input_ids != image_token_id)).any()):
        return None
    return torch.argsort(mask, dim=1, stable=True)                                   # [B, T]: zeros first


# ---- the vision tower: config and tensor layout ------------------------------------------------------
def vision_config(cfg: dict) -> ViTConfig:
    """BLIP-2's Blip2VisionConfig, or a CLIP / SigLIP tower's config (recipes), -> ViTConfig."""
    kind = cfg.get("model_type", BLIP2_VISION)
    if kind != BLIP2_VISION:
        return ViTConfig.from_hf(cfg)
    c = {**_VISION_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    if not c["qkv_bias"]:
        raise ConfigError("Blip2VisionConfig qkv_bias=false is not implemented (BLIP-2's towers have q/v biases)")
    return ViTConfig(image_size=c["image_size"], patch_size=c["patch_size"], num_channels=c["num_channels"],
                     hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                     num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                     layer_norm_eps=c["layer_norm_eps"], hidden_act=c["hidden_act"], use_cls_token=True,
                     pre_layernorm=False, post_layernorm=True, post_norm_on="sequence", pooling="cls",
                     patch_bias=True, hf={**cfg, "model_type": BLIP2_VISION})


def vision_kind(vit: ViTConfig) -> str:
    """'blip_2_vision_model' for BLIP-2's layout, else 'clip_vision_model' / 'siglip_vision_model'
    (ConfigError for a layout no config describes)."""
    if vit == vision_config({"image_size": vit.image_size, "patch_size": vit.patch_size,
                             "num_channels": vit.num_channels, "hidden_size": vit.hidden_size,
                             "intermediate_size": vit.intermediate_size, "num_hidden_layers": vit.num_layers,
                             "num_attention_heads": vit.num_heads, "layer_norm_eps": vit.layer_norm_eps,
                             "hidden_act": vit.hidden_act}):
        return BLIP2_VISION
    return vit.hf_kind()


def vision_hf_config(vit: ViTConfig) -> dict:
    kind = vision_kind(vit)
    if kind != BLIP2_VISION:
        return vit.to_hf()
    out = {k: v for k, v in vit.hf.items() if k not in ("architectures", "torch_dtype", "dtype")}
    out.update(model_type=BLIP2_VISION, image_size=vit.image_size, patch_size=vit.patch_size,
               num_channels=vit.num_channels, hidden_size=vit.hidden_size, intermediate_size=vit.intermediate_size,
               num_hidden_layers=vit.num_layers, num_attention_heads=vit.num_heads,
               layer_norm_eps=vit.layer_norm_eps, hidden_act=vit.hidden_act, qkv_bias=True)
    return out


# ---- build / config.json ----------------------------------------------------------------------------
def build_blip2(cfg: dict) -> Blip2:
    for key in ("vision_config", "text_config"):
        if not cfg.get(key):
            raise ConfigError(f"BLIP-2 config.json has no {key}")
    vision_cfg = dict(cfg["vision_config"])
    vision = VisionTransformer(vision_config(vision_cfg))
    if cfg.get("use_decoder_only_language_model") is False:
        raise ConfigError("BLIP-2 with an encoder-decoder LM (Flan-T5) is not implemented; use a Llama / Qwen2 text_config")
    text = text_config(cfg, "BLIP-2", default="opt")   # Blip2Config's text model when text_config names none
    decoder = DecoderLM(DecoderConfig.from_hf(text))
    qcfg = QFormerConfig.from_hf(dict(cfg.get("qformer_config") or {}), int(cfg.get("num_query_tokens", 32)),
                                 encoder_hidden_size=vision.config.hidden_size)
    image_token = config_image_token(cfg, "BLIP-2")
    if image_token is None:
        raise ConfigError("BLIP-2 config.json has no image_token_index (the placeholder the query outputs are "
                          "written at); transformers 5 checkpoints have it")
    model = Blip2(vision, QFormer(qcfg, text_embeddings=False), nn.Linear(qcfg.hidden_size, decoder.config.hidden_size),
                  decoder, image_token_id=int(image_token), qformer_part=cfg.get("qformer_part", "connector"))
    model.image_wrap = tuple(cfg.get("image_wrap") or ("", ""))   # text around each image's tokens (MiniGPT-4)
    model.hf_config = dict(cfg)
    return model


# ---- the recipe side (model.architecture: blip2) -------------------------------------------------------
# MiniGPT-4's conversation format (ocellus/data/templates.py `minigpt4`) as the chat template its
# processor renders with, so inference prompts are what training encoded
MINIGPT4_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set rest = messages[1:] %}"
    "{% else %}{{ '" + MINIGPT4_SYSTEM + "' }}{% set rest = messages %}{% endif %}###"
    "{% for m in rest %}{% if m['role'] == 'user' %}Human: {{ m['content'] }}###"
    "{% else %}Assistant: {{ m['content'] }}###{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}")
VARIANTS = {"blip2": dict(qformer_part="connector", image_wrap=("", ""), chat_template=None, stop_strings=()),
            # MiniGPT-4: the Q-Former is part of the frozen visual encoder; images sit in <Img>...</Img>; a reply
            # ends at the template's separator "###" (trained as the end of each answer), where MiniGPT-4's own
            # chat stops and cuts, not at an eos token
            "minigpt4": dict(qformer_part="vision", image_wrap=("<Img>", "</Img>"),
                             chat_template=MINIGPT4_CHAT_TEMPLATE, stop_strings=("###",))}


def compose(spec: dict, tok) -> Blip2:
    """A BLIP-2 (or MiniGPT-4) for a recipe: a pretrained ViT (vision_from), a pretrained decoder
    (llm_from), and the Q-Former of a stage-1 run (qformer_from: an OcellusBlip2QFormerPretraining
    export) or a new one (qformer: {num_query_tokens, hidden_size, num_hidden_layers, ...}), plus a new
    language_projection. variant: blip2 (stage 2 trains Q-Former + projection) | minigpt4 (only the
    projection; needs qformer_from)."""
    known = {"architecture", "vision_from", "llm_from", "qformer_from", "qformer", "variant", "image_token",
             "init_from"}
    if set(spec) - known:
        raise ConfigError(f"blip2 model: unknown keys {sorted(set(spec) - known)}; known: {sorted(known)}")
    if not (spec.get("vision_from") and spec.get("llm_from")):
        raise ConfigError("a blip2 model needs vision_from (a ViT dir) and llm_from (a decoder dir), or from")
    variant = spec.get("variant", "blip2")
    if variant not in VARIANTS:
        raise ConfigError(f"blip2 model.variant {variant!r}; choose from {sorted(VARIANTS)}")
    if bool(spec.get("qformer_from")) == bool(spec.get("qformer")):
        raise ConfigError("a blip2 model needs exactly one of qformer_from (a stage-1 export) or qformer (a new one's "
                          "numbers)")
    if variant == "minigpt4" and not spec.get("qformer_from"):
        raise ConfigError("MiniGPT-4 keeps BLIP-2's pretrained Q-Former frozen: give qformer_from (a stage-1 export)")
    image_token = spec.get("image_token", "<image>")
    image_id = tok.convert_tokens_to_ids(image_token)
    if image_id is None:
        raise ConfigError(f"the tokenizer has no image token {image_token!r}")
    stage1 = load_model(spec["qformer_from"]) if spec.get("qformer_from") else None
    if stage1 is not None and not hasattr(stage1, "qformer"):
        raise ConfigError(f"qformer_from {spec['qformer_from']} is a {type(stage1).__name__}, not a Q-Former stage-1 export")
    qformer = dict(spec.get("qformer") or {}) if stage1 is None else stage1.qformer.config.to_hf()
    queries = int(qformer.pop("num_query_tokens", 32)) if stage1 is None else stage1.qformer.config.num_query_tokens
    qformer["use_qformer_text_input"] = False       # the LM path never feeds text through the Q-Former
    vision_cfg, text_cfg = read_config(Path(spec["vision_from"])), read_config(Path(spec["llm_from"]))
    wrap = VARIANTS[variant]["image_wrap"]
    cfg = {"vision_config": vision_cfg, "qformer_config": qformer, "text_config": text_cfg,
           "num_query_tokens": queries, "image_token_index": image_id,
           "qformer_part": VARIANTS[variant]["qformer_part"], "image_wrap": list(wrap)}
    model = build_blip2(cfg)
    model.family_name = "blip2"
    model.vision_tower.load_state_dict(load_model(spec["vision_from"]).state_dict())
    model.language_model.load_state_dict(load_model(spec["llm_from"]).state_dict())
    if stage1 is not None:   # everything of the stage-1 Q-Former except its text side (embeddings, text FFN)
        theirs = stage1.qformer.state_dict()
        model.qformer.load_state_dict({k: theirs[k] for k in model.qformer.state_dict()})
    return model
