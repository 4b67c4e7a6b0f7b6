"""BLIP: a multimodal mixture of encoder-decoder, pretrained with ITC + ITM + LM.

Li et al. 2022, "BLIP: Bootstrapping Language-Image Pre-training for Unified Vision-Language
Understanding and Generation" (fig. 2, sec. 3.1-3.2). Reference implementation:
salesforce/BLIP models/blip_pretrain.py (BLIP_Pretrain.forward, tie_encoder_decoder_weights with
skip key '/attention') and models/med.py.

One image encoder (ViT) and one text transformer used three ways:

    unimodal text encoder        [CLS] caption, bidirectional, no cross-attention   -> ITC (with
                                 momentum queues and distillation, as ALBEF: momentum.py)
    image-grounded text encoder  [ENC] caption, bidirectional, cross-attention to the image in every
                                 layer; the ITM head reads [ENC]'s output (hard negatives as ALBEF)
    image-grounded text decoder  [DEC] caption, CAUSAL self-attention, the same cross-attention and
                                 feed-forward; an LM head (tied to the word embeddings) predicts each
                                 next token, label smoothing 0.1

The encoder and the decoder share every parameter except the self-attention layers (paper sec. 3.1:
"the text encoder and text decoder share all parameters except for the SA layers"): `tie_decoder`
builds the decoder from the encoder's embeddings, cross-attention and feed-forward modules (the
same tensors) plus its own self-attention and LM head.

`BLIP.generate` captions images through ocellus/infer/generate.py (greedy, beam search, nucleus
sampling) via `CaptionDecoder`: its cache keeps the prefix ids and the image states and reruns the
decoder over the prefix each step (no K/V cache in the BERT layers; O(T^2), fine for captions).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.infer.generate import generate as engine_generate   # BLIP.generate is the method
from ocellus.models.contrastive.albef import AlignConfig, AlignOutput, ImageTextHeads, align_parts, bert_layers
from ocellus.models.contrastive.clip import _group
from ocellus.models.contrastive.losses import hard_negatives, itg_loss, itm_loss
from ocellus.models.text.bert import Bert
from ocellus.models.vision.vit import VisionTransformer


def tie_decoder(encoder: Bert) -> Bert:
    """The image-grounded text decoder of an encoder: its own self-attention layers and LM head (an
    MLM-style head whose projection is the shared word embeddings); embeddings, cross-attention and
    feed-forward are the encoder's modules themselves."""
    if not all(layer.crossattention is not None for layer in encoder.layers):
        raise ConfigError("BLIP's text encoder needs cross-attention in every layer")
    decoder = Bert(encoder.config, pooler=False, mlm_head=True)
    decoder.embeddings = encoder.embeddings
    for enc, dec in zip(encoder.layers, decoder.layers):
        dec.crossattention, dec.ffn = enc.crossattention, enc.ffn
    decoder.mlm.decoder.weight = encoder.embeddings.word_embeddings.weight
    return decoder


class BLIP(ImageTextHeads):
    def __init__(self, visual_encoder: VisionTransformer, text_encoder: Bert, cfg: AlignConfig):
        super().__init__()
        tcfg = text_encoder.config
        if tcfg.vocab_size != cfg.vocab_size:
            raise ConfigError(f"BLIP's text vocabulary must be the tokenizer's + [CLS]/[MASK]/[ENC]/[DEC] = "
                              f"{cfg.vocab_size}, got {tcfg.vocab_size}")
        decoder = tie_decoder(text_encoder)       # made first: the heads' initialisation draws after it
        self._build_heads(visual_encoder, text_encoder, cfg)
        self.text_decoder = decoder               # registered after text_encoder: shared tensors keep its names
        self.family_name = "blip"

    def parts(self) -> dict[str, nn.Module]:
        """vision: ViT + projection; text: the shared text transformer (encoder + the decoder's own
        self-attention and LM head) + projection + ITM head + temperature. CapFilt's captioner trains
        `text` on LM only, its filter both parts on ITC + ITM (train/capfilt.py)."""
        return {"vision": _group(visual_encoder=self.visual_encoder, vision_proj=self.vision_proj),
                "text": _group(text_encoder=self.text_encoder, text_decoder=self.text_decoder,
                               text_proj=self.text_proj, itm_head=self.itm_head, temp=self.temp)}

    # -- the three text modes ---------------------------------------------------------------------
    def text_states(self, input_ids, attention_mask, bert: Bert | None = None) -> torch.Tensor:
        """Unimodal text encoder ([CLS] ...): every layer, cross-attention skipped -> [B, T, D]."""
        bert = bert or self.text_encoder
        bert._check_ids(input_ids)
        return bert_layers(bert.layers, bert.embeddings(input_ids), attention_mask)

    def grounded_states(self, input_ids, attention_mask, image) -> torch.Tensor:
        """Image-grounded text encoder: [ENC] in place of [CLS], cross-attention to image [B, S, Dv]."""
        ids = input_ids.clone()
        ids[:, 0] = self.config.enc_token_id
        return bert_layers(self.text_encoder.layers, self.text_encoder.embeddings(ids), attention_mask, image)

    def decoder_logits(self, input_ids, attention_mask, image) -> torch.Tensor:
        """Image-grounded text decoder over ids that start with [DEC]: causal -> LM logits [B, T, V]."""
        dec = self.text_decoder
        dec._check_ids(input_ids)
        return dec.mlm(bert_layers(dec.layers, dec.embeddings(input_ids), attention_mask, image, causal=True))

    # -- pretraining ------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                ids: torch.Tensor | None = None, generator: torch.Generator | None = None,
                objectives: tuple[str, ...] = ("itc", "itm", "lm")) -> AlignOutput:
        """input_ids [B, T]: [CLS] caption [SEP] (encode_captions). objectives: which losses to sum
        (CapFilt fine-tunes the captioner on ("lm",) and the filter on ("itc", "itm")); the others are
        returned as None and not computed (ITM needs ITC's similarities: "itm" computes them)."""
        cfg = self.config
        bad = set(objectives) - {"itc", "itm", "lm"}
        if bad or not objectives:
            raise InputError(f"objectives must be a non-empty subset of itc, itm, lm; got {objectives}")
        alpha = self.start_step(pixel_values, input_ids, attention_mask)
        vis = self.visual_encoder(pixel_values)
        image = vis.last_hidden_state                                                      # [B, S, Dv]
        out = AlignOutput(loss=None, loss_itc=None, loss_itm=None, alpha=alpha)
        if "itc" in objectives or "itm" in objectives:
            with torch.no_grad():
                self.temp.clamp_(0.001, 0.5)
            image_feat = F.normalize(self.vision_proj(vis.pooler_output), dim=-1)          # [B, E]
            text_feat = F.normalize(self.get_text_features(input_ids, attention_mask), dim=-1)
            loss_itc, sim_i2t, sim_t2i, _, _ = self.momentum_itc(
                pixel_values, input_ids, attention_mask, image_feat, text_feat, alpha, ids)
            if "itc" in objectives:
                out.loss_itc = loss_itc
            if "itm" in objectives:
                B = input_ids.shape[0]
                neg_text, neg_image = hard_negatives(sim_i2t[:, :B], sim_t2i[:, :B], ids, generator)
                out.loss_itm = itm_loss(self.itm_logits(self.grounded_states), input_ids, attention_mask, image,
                                        neg_text, neg_image)
        if "lm" in objectives:
            dec_ids = input_ids.clone()
            dec_ids[:, 0] = cfg.dec_token_id
            out.loss_lm = itg_loss(self.decoder_logits(dec_ids, attention_mask, image), dec_ids, attention_mask,
                                   cfg.label_smoothing)
        out.loss = sum(v for v in (out.loss_itc, out.loss_itm, out.loss_lm) if v is not None)
        return out

    # -- captioning -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, max_new_tokens: int = 20, **kwargs) -> torch.Tensor:
        """Captions [B, 1 + n] starting with [DEC], through the generation engine; kwargs:
        GenerationConfig fields (do_sample, top_p, num_beams, seed, ...)."""
        start = torch.full((pixel_values.shape[0], 1), self.config.dec_token_id, dtype=torch.long,
                           device=pixel_values.device)
        kwargs.setdefault("eos_token_id", self.config.eos_token_id)
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        return engine_generate(CaptionDecoder(self), start, max_new_tokens=max_new_tokens, pixel_values=pixel_values,
                               **kwargs)

    def caption(self, pixel_values: torch.Tensor, tok, **kwargs) -> list[str]:
        """Generated captions as text (the [DEC] start, eos and what follows dropped)."""
        out = []
        for row in self.generate(pixel_values, **kwargs)[:, 1:].tolist():
            if self.config.eos_token_id in row:
                row = row[:row.index(self.config.eos_token_id)]
            out.append(tok.decode([t for t in row if t < self.config.tokenizer_size], skip_special_tokens=True).strip())
        return out


class PrefixCache:
    """What the engine calls a cache, for a decoder without K/V caching: the ids so far and the
    image states, reordered with the beams; each step reruns the decoder over the whole prefix."""

    def __init__(self):
        self.ids: torch.Tensor | None = None        # [B, t]
        self.image: torch.Tensor | None = None      # [B, S, Dv]

    def reorder(self, index: torch.Tensor) -> None:
        self.ids, self.image = self.ids[index], self.image[index]


class CaptionDecoder(nn.Module):
    """BLIP's image-grounded decoder in the form ocellus/infer/generate.py drives: new_cache,
    max_context, forward(input_ids, cache=, logits_to_keep=, pixel_values= at prefill)."""

    def __init__(self, blip: BLIP):
        super().__init__()
        self.blip = blip
        self.config = blip.config
        self.max_context = blip.text_decoder.config.max_position_embeddings

    def new_cache(self, batch: int, max_len: int) -> PrefixCache:
        return PrefixCache()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache: PrefixCache | None = None,
                logits_to_keep: int = 0, pixel_values: torch.Tensor | None = None):
        if cache is None:
            raise InputError("CaptionDecoder runs inside the generation engine: pass cache=model.new_cache(...)")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise InputError("caption prompts are unpadded ([DEC] per image); attention_mask must be all ones")
        if cache.ids is None:
            if pixel_values is None:
                raise InputError("the first (prefill) step needs pixel_values")
            cache.image = self.blip.visual_encoder(pixel_values).last_hidden_state       # [B, S, Dv]
            cache.ids = input_ids
        else:
            cache.ids = torch.cat([cache.ids, input_ids], dim=1)                           # [B, t + 1]
        logits = self.blip.decoder_logits(cache.ids, None, cache.image)                    # [B, t, V]
        logits = logits[:, -logits_to_keep:] if logits_to_keep else logits
        return _Logits(logits)


class _Logits:
    def __init__(self, logits):
        self.logits = logits


# ---- building (its checkpoint format, ALBEF's layout: models/families/blip/) ------------------------
def build_blip(config: dict) -> BLIP:
    """Our config.json dict -> BLIP; every text layer cross-attends."""
    cfg, vit, bert_cfg = align_parts(config, "BLIP", lambda cfg, layers: range(layers))
    return BLIP(vit, Bert(bert_cfg, pooler=False), cfg)


__all__ = ["BLIP", "tie_decoder", "CaptionDecoder", "PrefixCache", "build_blip"]
