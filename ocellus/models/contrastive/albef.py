"""ALBEF: align the unimodal representations before fusing them.

Li et al. 2021, "Align before Fuse: Vision and Language Representation Learning with Momentum
Distillation" (fig. 1, sec. 3). Reference implementation: salesforce/ALBEF models/model_pretrain.py
and models/xbert.py (`mode="text"` runs the first layers, `mode="fusion"` the rest).

    image encoder     ViT (ocellus/models/vision/vit.py)               -> v = [v_cls, v_1..v_P]
    text encoder      the first `text_layers` BERT layers              -> w = [w_cls, w_1..w_T]
    fusion encoder    the remaining BERT layers, each with cross-attention from text to image
    ITC   contrastive loss of g_v(v_cls), g_w(w_cls) against a queue of momentum features,
          targets softened by the momentum model (ocellus/models/contrastive/momentum.py)
    ITM   a binary head on the fusion [CLS]: every positive pair plus, per image, one hard negative
          text and, per text, one hard negative image, drawn with probability softmax(ITC
          similarity) among the batch's non-positives (same id = positive, as ALBEF's retrieval
          fine-tuning and BLIP handle duplicate captions)
    MLM   15% of the text tokens corrupted 80/10/10 ([MASK] / random / kept), predicted by the
          fusion encoder, i.e. conditioned on the image; distilled from the momentum model's
          predictions: (1 - alpha) CE + alpha * soft CE                   (ALBEF Eq. 8)

One BERT (ocellus/models/text/bert.py, cross-attention in the fusion layers) holds both text and
fusion encoder; `bert_layers` runs a slice of its layers. The text vocabulary is the tokenizer's
plus [CLS], [MASK], [ENC], [DEC] (`SpecialIds`); [SEP] is the tokenizer's eos. ALBEF and BLIP
(ocellus/models/contrastive/blip.py) share this file's pieces: the config, the layer runner and the
heads; the losses (ITC with queues, hard negatives, ITM) are ocellus/models/contrastive/losses.py's.

Differences from the reference: the alpha ramp counts training forwards (`step` buffer) instead of
loader iterations; a batch whose masking chose no token gets one masked token (else its MLM loss is
NaN); the ITC features are the ViT's pooled (post-normed) [CLS]; unwritten queue slots are not
negatives, and `queue_start_step` can hold the queue back: both for training from scratch (the
papers start from a pretrained BERT and ViT), where a queue of random or of the first, nearly equal
features keeps ITC at chance (measured: recall@1 at chance after 200 steps; see the recipes).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.models.contrastive.clip import _group
from ocellus.models.contrastive.losses import hard_negatives, itm_loss, queue_itc, soft_cross_entropy
from ocellus.models.contrastive.momentum import NO_ID, FeatureQueue, distill_alpha, momentum_copy, momentum_update
from ocellus.models.text.bert import Bert, BertConfig, mask_tokens
from ocellus.models.vision.vit import ViTConfig, VisionTransformer
from ocellus.nn.masks import build_attention_mask

NUM_EXTRA_TOKENS = 4   # [CLS], [MASK], [ENC], [DEC] after the tokenizer's ids


@dataclass(frozen=True)
class AlignConfig:
    """The numbers of ALBEF and BLIP pretraining (their defaults as the papers' configs)."""
    tokenizer_size: int                  # the tokenizer's ids; the text vocabulary adds NUM_EXTRA_TOKENS
    eos_token_id: int                    # [SEP]: ends every caption (and every generated one)
    pad_token_id: int
    embed_dim: int = 256                 # ITC space
    queue_size: int = 65536              # K momentum features per modality
    momentum: float = 0.995              # m of the momentum encoders
    alpha: float = 0.4                   # distillation weight after the ramp
    alpha_warmup_steps: int = 1000       # ALBEF ramps alpha over the first epoch
    temp: float = 0.07                   # initial ITC temperature (learned, clamped to [0.001, 0.5])
    queue_start_step: int = 0            # enqueue only after this many training steps (0: ALBEF/BLIP). From
                                         # scratch the first features are nearly equal; a queue of them stalls ITC
    text_layers: int = 6                 # ALBEF: layers of the text encoder; the rest fuse. BLIP: unused
    mlm_probability: float = 0.15        # ALBEF
    label_smoothing: float = 0.1         # BLIP's LM loss

    def __post_init__(self):
        positive_ints(self, ("tokenizer_size", "embed_dim", "queue_size"), "align config field {!r}")
        for name in ("eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v < self.tokenizer_size:
                raise ConfigError(f"{name}={v!r} must be a token id of the tokenizer (0..{self.tokenizer_size - 1})")
        if not 0.0 <= self.momentum <= 1.0 or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"momentum ({self.momentum}) and alpha ({self.alpha}) must be in [0, 1]")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.temp <= 0:
            raise ConfigError(f"temp must be positive, got {self.temp}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer_size + NUM_EXTRA_TOKENS

    @property
    def cls_token_id(self) -> int:
        return self.tokenizer_size

    @property
    def mask_token_id(self) -> int:
        return self.tokenizer_size + 1

    @property
    def enc_token_id(self) -> int:
        return self.tokenizer_size + 2

    @property
    def dec_token_id(self) -> int:
        return self.tokenizer_size + 3

    @classmethod
    def from_dict(cls, d: dict) -> "AlignConfig":
        names = {f.name for f in fields(cls)}
        if set(d) - names:
            raise ConfigError(f"unknown align config keys {sorted(set(d) - names)}; known: {sorted(names)}")
        return cls(**d)


def encode_captions(texts: list[str], tok, cfg: AlignConfig, max_length: int) -> dict[str, torch.Tensor]:
    """Captions -> [CLS] caption [SEP] ids [B, T] (right-padded) and attention_mask. A caption longer
    than max_length is an InputError naming it (never cut silently)."""
    rows = []
    for i, text in enumerate(texts):
        ids = [cfg.cls_token_id, *tok.encode(text, add_special_tokens=False), cfg.eos_token_id]
        if len(ids) > max_length:
            raise InputError(f"caption {i} ({text[:60]!r}) is {len(ids)} tokens with [CLS]/[SEP]; the text encoder "
                             f"takes at most {max_length}")
        rows.append(ids)
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), cfg.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# ---- running BERT layers --------------------------------------------------------------------------
def bert_layers(layers, x: torch.Tensor, attention_mask: torch.Tensor | None, image: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
    """x [B, T, D] through BERT layers (ocellus/models/text/bert.py BertLayer): self-attention
    (bidirectional, or causal for BLIP's decoder), then cross-attention to `image` [B, S, Dv] where
    the layer has it and an image is given (none: the layer acts as a text-only layer, like xbert's
    mode="text"), then the feed-forward. attention_mask [B, T]: 1 = token, 0 = padding."""
    T = x.shape[1]
    mask = build_attention_mask(T, T, attention_mask=attention_mask, causal=causal, device=x.device)
    if mask is None and causal:     # BertAttention never applies causality itself: make it explicit
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]      # [1, 1, T, T]
    for layer in layers:
        x = layer.attention(x, mask)
        if image is not None and layer.crossattention is not None:
            x = layer.crossattention(x, None, kv=image)
        x = layer.ffn(x)
    return x


# ---- MLM ------------------------------------------------------------------------------------------
def mask_for_mlm(input_ids: torch.Tensor, attention_mask: torch.Tensor, cfg: AlignConfig,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of `mlm_probability` of the tokens, [CLS] and padding never chosen;
    random replacements are tokenizer ids (never [CLS]/[MASK]). -> (corrupted ids, labels)."""
    special = (input_ids == cfg.cls_token_id) | (attention_mask == 0)
    ids, labels = mask_tokens(input_ids, cfg.mask_token_id, cfg.tokenizer_size, special, cfg.mlm_probability,
                              generator)
    if not bool((labels != -100).any()):       # tiny batch, nothing drawn: mask one eligible token
        eligible = (~special).flatten().nonzero().flatten()
        if eligible.numel() == 0:
            raise InputError("MLM found no maskable token in the batch (captions are empty)")
        pick = eligible[torch.randint(eligible.numel(), (1,), generator=generator)]
        labels.view(-1)[pick] = input_ids.view(-1)[pick]
        ids.view(-1)[pick] = cfg.mask_token_id
    return ids, labels


def distilled_mlm_loss(logits: torch.Tensor, labels: torch.Tensor, soft_targets: torch.Tensor | None,
                       alpha: float) -> torch.Tensor:
    """(1 - alpha) * CE(logits, labels) + alpha * soft CE(logits, soft_targets), both averaged over
    the masked positions (labels != -100) only (ALBEF's BertForMaskedLM with soft_labels)."""
    chosen = labels != -100
    if not bool(chosen.any()):
        raise InputError("MLM labels mark no masked position")
    hard = F.cross_entropy(logits[chosen].float(), labels[chosen])
    if soft_targets is None or alpha == 0:
        return hard
    return (1 - alpha) * hard + alpha * soft_cross_entropy(logits[chosen], soft_targets[chosen]).mean()


# ---- the model ------------------------------------------------------------------------------------
@dataclass
class AlignOutput:
    loss: torch.Tensor
    loss_itc: torch.Tensor
    loss_itm: torch.Tensor
    loss_mlm: torch.Tensor | None = None     # ALBEF
    loss_lm: torch.Tensor | None = None      # BLIP
    alpha: float = 0.0


class ImageTextHeads(nn.Module):
    """What ALBEF and BLIP expose the same way: ITC features (unnormalised projections of the image and
    text [CLS]), ITM match probabilities from `grounded_states` (text states that cross-attended to the
    image), and the text encoder used by retrieval evaluation. Subclasses define text_states and
    grounded_states."""

    def _build_heads(self, visual_encoder: VisionTransformer, text_encoder: Bert, cfg: AlignConfig) -> None:
        """The towers, their ITC projections and temperature, the ITM head, the momentum copies and the
        feature queue: ALBEF's and BLIP's alike."""
        tcfg = text_encoder.config
        if (tcfg.encoder_hidden_size or tcfg.hidden_size) != visual_encoder.config.hidden_size:
            raise ConfigError(f"the text layers cross-attend to {tcfg.encoder_hidden_size}-wide features, the image "
                              f"encoder gives {visual_encoder.config.hidden_size}")
        self.config = cfg
        self.visual_encoder, self.text_encoder = visual_encoder, text_encoder
        self.vision_proj = nn.Linear(visual_encoder.config.hidden_size, cfg.embed_dim)
        self.text_proj = nn.Linear(tcfg.hidden_size, cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))
        self.itm_head = nn.Linear(tcfg.hidden_size, 2)
        self.visual_encoder_m, self.vision_proj_m = momentum_copy(visual_encoder), momentum_copy(self.vision_proj)
        self.text_encoder_m, self.text_proj_m = momentum_copy(text_encoder), momentum_copy(self.text_proj)
        self.queue = FeatureQueue(cfg.embed_dim, cfg.queue_size)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))   # training forwards, for the alpha ramp

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.visual_encoder, self.visual_encoder_m), (self.vision_proj, self.vision_proj_m),
                (self.text_encoder, self.text_encoder_m), (self.text_proj, self.text_proj_m)]

    def start_step(self, pixel_values, input_ids, attention_mask) -> float:
        """Check that the batch holds B (image, text) pairs, count the training forward, and return the
        distillation weight alpha of this step (ramped up over alpha_warmup_steps)."""
        if input_ids.shape != attention_mask.shape or input_ids.shape[0] != pixel_values.shape[0]:
            raise InputError(f"pixel_values {tuple(pixel_values.shape)}, input_ids {tuple(input_ids.shape)} and "
                             f"attention_mask {tuple(attention_mask.shape)} must describe the same B pairs")
        if self.training:
            self.step += 1
        return distill_alpha(self.config.alpha, int(self.step), self.config.alpha_warmup_steps)

    def momentum_itc(self, pixel_values, input_ids, attention_mask, image_feat, text_feat, alpha: float, ids):
        """ITC of this batch's features against the momentum model's and the queue's (the EMA step comes
        first in training), then this batch's momentum features join the queue.
        -> (loss, sim_i2t, sim_t2i, momentum image states [B, S, Dv], momentum text states [B, T, D])."""
        with torch.no_grad():
            if self.training:
                momentum_update(self.momentum_pairs(), self.config.momentum)
            vis_m = self.visual_encoder_m(pixel_values)
            image_feat_m = F.normalize(self.vision_proj_m(vis_m.pooler_output), dim=-1)     # [B, E]
            text_m = self.text_states(input_ids, attention_mask, self.text_encoder_m)
            text_feat_m = F.normalize(self.text_proj_m(text_m[:, 0]), dim=-1)               # [B, E]
        loss, sim_i2t, sim_t2i = queue_itc(image_feat, text_feat, image_feat_m, text_feat_m, self.queue,
                                           self.temp, alpha, ids)
        if self.training and int(self.step) > self.config.queue_start_step:
            self.queue.enqueue(image_feat_m, text_feat_m, ids if ids is not None else torch.full_like(
                input_ids[:, 0], NO_ID))
        return loss, sim_i2t, sim_t2i, vis_m.last_hidden_state, text_m

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """g_v(v_cls) [N, E], unnormalised (v_cls: the ViT's pooled, post-normed [CLS])."""
        return self.vision_proj(self.visual_encoder(pixel_values).pooler_output)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """g_w(w_cls) [N, E], unnormalised."""
        return self.text_proj(self.text_states(input_ids, attention_mask)[:, 0])

    @torch.no_grad()
    def itm_scores(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """P(match) [B] of each (image i, text i) pair from the ITM head (CapFilt's filter)."""
        return self.itm_from_states(self.visual_encoder(pixel_values).last_hidden_state, input_ids, attention_mask)

    def itm_logits(self, grounded):
        """ITM's score function: grounded(text, mask, image) -> states [N, T, D] -> match logits [N, 2] of
        the first ([CLS] / [ENC]) position (losses.itm_loss)."""
        return lambda text, mask, image: self.itm_head(grounded(text, mask, image)[:, 0])

    @torch.no_grad()
    def itm_from_states(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """P(match) [B] from image states [B, S, Dv] already computed (retrieval re-ranking)."""
        return self.itm_logits(self.grounded_states)(input_ids, attention_mask, image).float().softmax(-1)[:, 1]

    def encode_text_fn(self, tok, max_length: int | None = None):
        """list[str] -> normalised ITC text features (for ocellus/eval/retrieval.py)."""
        limit = max_length or self.text_encoder.config.max_position_embeddings
        return lambda texts: F.normalize(self.get_text_features(**encode_captions(list(texts), tok, self.config,
                                                                                  limit)), dim=-1)


class ALBEF(ImageTextHeads):
    def __init__(self, visual_encoder: VisionTransformer, text_encoder: Bert, cfg: AlignConfig):
        super().__init__()
        tcfg = text_encoder.config
        fusion = tuple(range(cfg.text_layers, tcfg.num_hidden_layers))
        if not 0 < cfg.text_layers < tcfg.num_hidden_layers or tcfg.cross_attention_layers != fusion:
            raise ConfigError(f"ALBEF's BERT must have cross-attention exactly in the fusion layers {fusion} "
                              f"(text_layers={cfg.text_layers} of {tcfg.num_hidden_layers}); it has "
                              f"{tcfg.cross_attention_layers}")
        if text_encoder.mlm is None or tcfg.vocab_size != cfg.vocab_size:
            raise ConfigError(f"ALBEF's BERT needs an MLM head and vocab_size {cfg.vocab_size} (tokenizer + "
                              f"{NUM_EXTRA_TOKENS}); got head={text_encoder.mlm is not None}, vocab={tcfg.vocab_size}")
        self._build_heads(visual_encoder, text_encoder, cfg)
        self.family_name = "albef"

    def parts(self) -> dict[str, nn.Module]:
        """vision: ViT + its projection; text: BERT (text + fusion + MLM) + projection + ITM head +
        temperature. The momentum copies are never trained (they follow by EMA)."""
        return {"vision": _group(visual_encoder=self.visual_encoder, vision_proj=self.vision_proj),
                "text": _group(text_encoder=self.text_encoder, text_proj=self.text_proj, itm_head=self.itm_head,
                               temp=self.temp)}

    # -- encoders ---------------------------------------------------------------------------------
    def text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, bert: Bert | None = None):
        """The text encoder (first text_layers layers) -> [B, T, D]."""
        bert = bert or self.text_encoder
        bert._check_ids(input_ids)
        return bert_layers(bert.layers[:self.config.text_layers], bert.embeddings(input_ids), attention_mask)

    def fuse(self, text: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor,
             bert: Bert | None = None) -> torch.Tensor:
        """The fusion encoder: text states [B, T, D] cross-attending to image states [B, S, Dv]."""
        bert = bert or self.text_encoder
        return bert_layers(bert.layers[self.config.text_layers:], text, attention_mask, image)

    def grounded_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor):
        """Text encoder then fusion encoder: [B, T, D] text states that attended to the image."""
        return self.fuse(self.text_states(input_ids, attention_mask), attention_mask, image)

    # -- pretraining ------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                ids: torch.Tensor | None = None, generator: torch.Generator | None = None) -> AlignOutput:
        """pixel_values [B, 3, H, W]; input_ids / attention_mask [B, T] from encode_captions; ids [B]
        (optional): pairs with equal ids are positives of each other. In training mode the momentum
        model, the queue and the alpha ramp move; in eval mode nothing changes."""
        cfg = self.config
        alpha = self.start_step(pixel_values, input_ids, attention_mask)
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        vis = self.visual_encoder(pixel_values)
        image = vis.last_hidden_state                                                      # [B, S, Dv]
        image_feat = F.normalize(self.vision_proj(vis.pooler_output), dim=-1)              # [B, E]
        text = self.text_states(input_ids, attention_mask)                                 # [B, T, D]
        text_feat = F.normalize(self.text_proj(text[:, 0]), dim=-1)                        # [B, E]
        loss_itc, sim_i2t, sim_t2i, image_m, text_m = self.momentum_itc(
            pixel_values, input_ids, attention_mask, image_feat, text_feat, alpha, ids)

        B = input_ids.shape[0]
        neg_text, neg_image = hard_negatives(sim_i2t[:, :B], sim_t2i[:, :B], ids, generator)
        loss_itm = itm_loss(self.itm_logits(self.fuse), text, attention_mask, image, neg_text, neg_image)

        masked, labels = mask_for_mlm(input_ids, attention_mask, cfg, generator)
        with torch.no_grad():
            fused_m = self.fuse(self.text_states(masked, attention_mask, self.text_encoder_m), attention_mask,
                                image_m, self.text_encoder_m)
            soft = F.softmax(self.text_encoder_m.mlm(fused_m).float(), dim=-1)             # [B, T, V]
        logits = self.text_encoder.mlm(self.fuse(self.text_states(masked, attention_mask), attention_mask, image))
        loss_mlm = distilled_mlm_loss(logits, labels, soft, alpha)
        return AlignOutput(loss=loss_itc + loss_itm + loss_mlm, loss_itc=loss_itc, loss_itm=loss_itm,
                           loss_mlm=loss_mlm, alpha=alpha)


# ---- building (its checkpoint format, Ocellus' own: models/families/albef/) -------------------------
def text_bert_config(text: dict, cfg: AlignConfig, vision_width: int, cross_attention_layers) -> BertConfig:
    """A BERT config dict (transformers' field names: hidden_size, num_hidden_layers, ...) -> the
    BertConfig of the text side, vocabulary from the AlignConfig, cross-attention where asked."""
    derived = {"vocab_size": cfg.vocab_size, "pad_token_id": cfg.pad_token_id, "encoder_hidden_size": vision_width,
               "cross_attention_layers": tuple(cross_attention_layers)}   # a saved config repeats these: recomputed
    allowed = {f.name for f in fields(BertConfig)} - {"hf"}
    if set(text) - allowed:
        raise ConfigError(f"unknown text config keys {sorted(set(text) - allowed)}; BERT fields: "
                          f"{sorted(allowed - set(derived))}")
    return BertConfig(**{**{k: v for k, v in text.items() if k not in derived}, **derived})


def vision_from_config(vision: dict) -> VisionTransformer:
    return VisionTransformer(ViTConfig.from_hf({"model_type": "clip_vision_model", **vision}))


def align_parts(config: dict, name: str, cross_attention) -> tuple[AlignConfig, VisionTransformer, BertConfig]:
    """Our config.json dict {vision_config, text_config, align_config} -> (AlignConfig, the ViT, the text
    BertConfig with cross-attention in the layers cross_attention(align config, num_layers) names): what
    ALBEF and BLIP build from. text_config: BERT fields; align_config: AlignConfig fields."""
    for key in ("vision_config", "text_config", "align_config"):
        if key not in config:
            raise ConfigError(f"{name} config lacks {key!r}")
    cfg = AlignConfig.from_dict(config["align_config"])
    vit = vision_from_config(config["vision_config"])
    layers = int(config["text_config"]["num_hidden_layers"])
    return cfg, vit, text_bert_config(config["text_config"], cfg, vit.config.hidden_size, cross_attention(cfg, layers))


def build_albef(config: dict) -> ALBEF:
    """Our config.json dict -> ALBEF (random init unless the loader skips it); fusion layers cross-attend."""
    cfg, vit, bert_cfg = align_parts(config, "ALBEF", lambda cfg, layers: range(cfg.text_layers, layers))
    return ALBEF(vit, Bert(bert_cfg, pooler=False, mlm_head=True), cfg)


__all__ = ["ALBEF", "AlignConfig", "AlignOutput", "encode_captions", "bert_layers", "mask_for_mlm", "distilled_mlm_loss",
           "build_albef", "NUM_EXTRA_TOKENS"]
