"""Flamingo (Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning"):
a frozen vision encoder -> Perceiver Resampler -> gated cross-attention dense blocks inserted
between the layers of a frozen decoder LM (deep fusion), over interleaved image-text sequences.

Reference implementation: open_flamingo (open_flamingo/src/flamingo.py, flamingo_lm.py, helpers.py):
  - every image becomes ONE <image> token in the text; the pixels travel separately (pixel_values)
    and the model reads them through cross-attention, not as spliced tokens (LLaVA's early fusion);
  - a block is inserted before decoder layer i when (i + 1) % cross_attn_every_n_layers == 0
    (open_flamingo's FlamingoLMMixin placement), with its gates at 0;
  - a text token attends only to the image whose <image> token most recently precedes it (or is
    itself); tokens before the first image attend to nothing (models/fusion_xattn.py);
  - the vision encoder's patch tokens (CLS dropped, vision_feature_select_strategy "default") or a
    ResNet's feature map (models/vision/resnet.py; Flamingo's own encoder was a convolutional
    NFNet) go through the resampler at the encoder's width, the cross-attention projects them.

There is no transformers class for Flamingo (IDEFICS is close but differs), so the checkpoint
format is our own (checkpoint.py): config.json architectures ["OcellusFlamingoForConditionalGeneration"],
model_type "ocellus_flamingo", vision_config / text_config as LLaVA writes them, and
perceiver_config / cross_attn_config / cross_attn_every_n_layers for the new parts. The processor:
processor.py (one <image> token per image).

Generation: the images are encoded, resampled and projected to each block's keys/values once, at
prefill, and kept in the cache (`FlamingoCache`) with each row's media time; decode steps feed only
the new token.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.hub.checkpoint import load_model, read_config
from ocellus.models.connectors.perceiver import PerceiverConfig, PerceiverResampler
from ocellus.models.families.common import feature_layer, image_token_id, text_config
from ocellus.models.generates import GeneratesWithDecoder
from ocellus.models.fusion_xattn import GatedCrossAttentionBlock, media_mask, media_time
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vision.resnet import MODEL_TYPE as RESNET_TYPE, ResNetConfig, ResNetEncoder
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.nn.kv_cache import StaticKVCache

ARCHITECTURE = "OcellusFlamingoForConditionalGeneration"
MODEL_TYPES = ("ocellus_flamingo",)


class FlamingoCache:
    """The decoder's StaticKVCache plus what cross-attention needs on every decode step: each
    block's media keys/values (computed once, at prefill) and each row's media time (the index of
    the latest image in its prompt; a generated <image> token brings no pixels, so it stays)."""

    def __init__(self, text: StaticKVCache):
        self.text = text
        self.media_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_time: torch.Tensor | None = None     # [B]
        self.num_media = 0                              # M: media slots per row
        self.tokens_per_media = 0                       # n: resampled tokens per media

    @property
    def length(self) -> int:
        return self.text.length

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row b becomes row index[b], media included."""
        self.text.reorder(index)
        if self.last_time is not None:
            self.last_time = self.last_time[index]
        if self.media_kv is not None:
            self.media_kv = {k: (kv[0][index], kv[1][index]) for k, kv in self.media_kv.items()}

    def nbytes(self) -> int:
        media = sum(t.numel() * t.element_size() for kv in (self.media_kv or {}).values() for t in kv)
        return self.text.nbytes() + media


class Flamingo(GeneratesWithDecoder):
    """vision_tower (VisionTransformer or ResNetEncoder) -> perceiver -> gated_cross_attn blocks
    (a ModuleDict keyed by the decoder layer they precede) inside language_model (DecoderLM)."""

    def __init__(self, vision_tower: nn.Module, perceiver: PerceiverResampler, gated_cross_attn: nn.ModuleDict,
                 language_model: DecoderLM, image_token_id: int, feature_layer: int = -1,
                 feature_select: str = "default"):
        super().__init__()
        bad = [k for k in gated_cross_attn if not (k.isdigit() and int(k) < language_model.config.num_hidden_layers)]
        if bad:
            raise ConfigError(f"gated cross-attention keys {bad} are not layer indices of the "
                              f"{language_model.config.num_hidden_layers}-layer decoder")
        self.vision_tower = vision_tower
        self.perceiver = perceiver
        self.gated_cross_attn = gated_cross_attn
        self.attach_decoder(language_model)
        self.image_token_id = image_token_id
        self.feature_layer = feature_layer
        self.feature_select = feature_select

    def parts(self) -> dict[str, nn.Module]:
        """Training stages address these: the connector is the resampler and every xattn block."""
        return {"vision": self.vision_tower,
                "connector": nn.ModuleDict({"perceiver": self.perceiver, "gated_cross_attn": self.gated_cross_attn}),
                "llm": self.language_model}

    # -- the generation engine's interface ------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> FlamingoCache:
        return FlamingoCache(self.language_model.new_cache(batch_size, max_len))

    def check_generate(self, input_ids, **kwargs) -> None:
        if (kwargs.get("num_beams") or 1) > 1 and isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 \
                and bool(((input_ids == self.image_token_id).sum(1) > 1).any()):
            # beam search repeats every prefill tensor row by row (image i -> K copies), which keeps a
            # row's images together only when it has at most one
            raise NotImplementedError("beam search over prompts with several images in one row is not "
                                      "implemented for Flamingo; use greedy or sampled decoding")

    # -- media ----------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> the vision encoder's tokens [N, P, Dv]."""
        pixel_values = pixel_values.to(next(self.vision_tower.parameters()).dtype)
        if isinstance(self.vision_tower, VisionTransformer):
            return self.vision_tower.features(pixel_values, layer=self.feature_layer, strategy=self.feature_select)
        return self.vision_tower(pixel_values)

    def resample(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] or videos [N, F, 3, H, W] -> visual tokens [N, num_latents, Dv]."""
        if pixel_values.dim() == 5:
            N, F = pixel_values.shape[:2]
            feats = self.image_features(pixel_values.flatten(0, 1))                 # [N*F, P, Dv]
            return self.perceiver(feats.unflatten(0, (N, F)))                       # [N, L, Dv]
        if pixel_values.dim() != 4:
            raise InputError(f"pixel_values must be images [N, 3, H, W] or videos [N, frames, 3, H, W], "
                             f"got {tuple(pixel_values.shape)}")
        return self.perceiver(self.image_features(pixel_values))                   # [N, L, Dv]

    def media_per_row(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor | None:
        """-> media [B, M, L, Dv] (row b's images in slots 0..count_b-1, zeros after), or None when
        the batch has no images. pixel_values holds the images of all rows in order (row 0's first)."""
        counts = (input_ids == self.image_token_id).sum(dim=1)                     # [B]
        total = int(counts.sum())
        if pixel_values is None:
            if total:
                rows = counts.nonzero().flatten().tolist()
                raise InputError(f"rows {rows} of input_ids hold image tokens (id {self.image_token_id}) but no "
                                 f"pixel_values were given")
            return None
        if pixel_values.shape[0] != total:
            raise InputError(f"pixel_values holds {pixel_values.shape[0]} images but input_ids hold {total} image "
                             f"tokens (per row: {counts.tolist()}); each image is one {self.image_token_id} token")
        if total == 0:
            return None
        visual = self.resample(pixel_values)                                       # [N, L, Dv]
        B, M = counts.shape[0], int(counts.max())
        row = torch.repeat_interleave(torch.arange(B, device=counts.device), counts)   # [N] row of each image
        first = torch.cumsum(counts, 0) - counts                                   # [B] index of a row's first image
        slot = torch.arange(total, device=counts.device) - first[row]              # [N] its slot in the row
        media = visual.new_zeros(B, M, *visual.shape[1:])                          # [B, M, L, Dv]
        media[row, slot] = visual
        return media

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: FlamingoCache | None = None, logits_to_keep: int = 0,
                **kwargs):
        if input_ids is None:
            raise InputError("Flamingo needs input_ids: which image a token sees comes from the <image> tokens")
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if cache is not None and not isinstance(cache, FlamingoCache):
            raise InputError(f"Flamingo needs its own cache (model.new_cache), got {type(cache).__name__}")
        B, T = input_ids.shape
        if cache is None or cache.length == 0:                                     # full forward, or prefill
            media = self.media_per_row(input_ids, pixel_values)
            kv = None if media is None else {k: blk.attn.media_kv(media) for k, blk in self.gated_cross_attn.items()}
            text_time = media_time(input_ids, self.image_token_id)                 # [B, T]
            M, n = (0, 0) if media is None else media.shape[1:3]
            if cache is not None:
                cache.media_kv, cache.last_time = kv, text_time[:, -1]
                cache.num_media, cache.tokens_per_media = M, n
        else:
            if pixel_values is not None:
                raise InputError("pixel_values are read at prefill; a decode step (cache.length > 0) takes only new ids")
            kv, M, n = cache.media_kv, cache.num_media, cache.tokens_per_media
            text_time = cache.last_time[:, None].expand(B, T)                      # [B, T]
        mask = media_mask(text_time, M, n) if kv is not None else None            # [B, 1, T, M*n]
        has_media = (text_time > 0)[:, :, None]                                    # [B, T, 1]

        def before_layer(i: int, x: torch.Tensor) -> torch.Tensor:
            block = self.gated_cross_attn[str(i)] if str(i) in self.gated_cross_attn else None
            if block is None:
                return x
            return block(x, None if kv is None else kv[str(i)], mask, has_media)

        return self.language_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   labels=labels, cache=None if cache is None else cache.text,
                                   logits_to_keep=logits_to_keep, before_layer=before_layer, **kwargs)


def build_vision(vision_cfg: dict) -> nn.Module:
    """A vision_config dict -> a CLIP/SigLIP ViT or (model_type ocellus_resnet) a ResNet."""
    if vision_cfg.get("model_type") == RESNET_TYPE:
        return ResNetEncoder(ResNetConfig.from_hf(vision_cfg))
    return VisionTransformer(ViTConfig.from_hf(vision_cfg))


def cross_attn_layers(num_layers: int, every_n: int) -> list[int]:
    """Decoder layers preceded by a gated xattn block: (i + 1) % every_n == 0, as open_flamingo."""
    if not isinstance(every_n, int) or isinstance(every_n, bool) or not 1 <= every_n <= num_layers:
        raise ConfigError(f"cross_attn_every_n_layers must be an int in 1..{num_layers} (the decoder's layers), "
                          f"got {every_n!r}")
    return [i for i in range(num_layers) if (i + 1) % every_n == 0]


def build_flamingo(cfg: dict) -> Flamingo:
    for key in ("vision_config", "text_config", "perceiver_config"):
        if not isinstance(cfg.get(key), dict):
            raise ConfigError(f"Flamingo config.json has no {key} (a mapping)")
    vision = build_vision(cfg["vision_config"])
    decoder = DecoderLM(DecoderConfig.from_hf(text_config(cfg)))
    layer, select = feature_layer(cfg, "Flamingo", "default")
    dim = vision.config.hidden_size  # the resampler works at the vision tower's width, as open_flamingo's
    if cfg["perceiver_config"].get("dim", dim) != dim:
        raise ConfigError(f"perceiver_config.dim={cfg['perceiver_config']['dim']} differs from the vision tower's "
                          f"hidden_size {dim}; leave it out")
    perceiver = PerceiverResampler(PerceiverConfig.from_dict({**cfg["perceiver_config"], "dim": dim}))
    xattn = dict(cfg.get("cross_attn_config") or {})
    unknown = set(xattn) - {"heads", "head_dim", "ff_mult"}
    if unknown:
        raise ConfigError(f"cross_attn_config: unknown fields {sorted(unknown)}; known: ff_mult, head_dim, heads")
    hidden = decoder.config.hidden_size
    layers = cross_attn_layers(decoder.config.num_hidden_layers, cfg.get("cross_attn_every_n_layers", 1))
    blocks = nn.ModuleDict({str(i): GatedCrossAttentionBlock(hidden, dim, heads=int(xattn.get("heads", 8)),
                                                             head_dim=int(xattn.get("head_dim", 64)),
                                                             ff_mult=int(xattn.get("ff_mult", 4)))
                            for i in layers})
    image_token = cfg.get("image_token_index")
    if not isinstance(image_token, int):
        raise ConfigError(f"Flamingo config.json needs image_token_index (the <image> token id), got {image_token!r}")
    model = Flamingo(vision, perceiver, blocks, decoder, image_token_id=image_token, feature_layer=layer,
                     feature_select=select)
    model.hf_config = dict(cfg)
    return model


# ---- the recipe side (model.architecture: flamingo) -----------------------------------------------------
def compose(spec: dict, tok) -> Flamingo:
    """A Flamingo for a recipe: a pretrained ViT (vision_from) or a new ResNet (vision: {model_type:
    ocellus_resnet, ...}), a pretrained decoder (llm_from), a new resampler and new xattn blocks.

    spec keys: perceiver {depth, num_latents, heads, head_dim, ff_mult, max_num_frames, max_num_patches},
    cross_attn {every_n_layers, heads, head_dim, ff_mult}, feature_layer (-1), feature_select
    ("default"), image_token ("<image>")."""
    if not spec.get("llm_from"):
        raise ConfigError("a flamingo model needs llm_from (a pretrained decoder dir), or from (a whole checkpoint)")
    if bool(spec.get("vision_from")) == bool(spec.get("vision")):
        raise ConfigError("a flamingo model needs exactly one of vision_from (a pretrained ViT dir) or vision "
                          "(a new ResNet's config, model_type: ocellus_resnet)")
    known = {"architecture", "vision_from", "llm_from", "vision", "perceiver", "cross_attn", "feature_layer",
             "feature_select", "image_token", "init_from"}
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(f"flamingo model: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    vision_cfg = read_config(Path(spec["vision_from"])) if spec.get("vision_from") \
        else {"model_type": RESNET_TYPE, **spec["vision"]}
    xattn = dict(spec.get("cross_attn") or {})
    every = xattn.pop("every_n_layers", 1)
    cfg = {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPES[0], "vision_config": vision_cfg,
           "text_config": read_config(Path(spec["llm_from"])), "image_token_index": image_token_id(tok, spec),
           "perceiver_config": dict(spec.get("perceiver") or {}), "cross_attn_config": xattn,
           "cross_attn_every_n_layers": every, "vision_feature_layer": spec.get("feature_layer", -1),
           "vision_feature_select_strategy": spec.get("feature_select", "default")}
    model = build_flamingo(cfg)
    model.family_name = "flamingo"
    if spec.get("vision_from"):
        model.vision_tower.load_state_dict(load_model(spec["vision_from"]).state_dict())
    model.language_model.load_state_dict(load_model(spec["llm_from"]).state_dict())
    return model
