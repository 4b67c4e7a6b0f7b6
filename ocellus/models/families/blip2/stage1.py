"""BLIP-2 stage 1: vision-language representation learning of the Q-Former against a frozen image
encoder (Li et al. 2023, "BLIP-2", sec. 3.2 and fig. 2), three objectives sharing one Q-Former, each
with its own self-attention mask over [queries ; text]:

  ITC  image-text contrastive, UNIMODAL mask (queries and text cannot see each other): the image-text
       similarity is the max over the queries of cos(query output, text [CLS] output), / temperature;
       symmetric cross-entropy against the in-batch pairing.
  ITG  image-grounded text generation, MULTIMODAL CAUSAL mask: queries see queries only, a text token
       sees every query and the text up to itself; the first text token is replaced by [DEC] and the
       LM head predicts the next token (the queries must carry everything the text needs).
  ITM  image-text matching, BIDIRECTIONAL mask: a linear classifier on each query output, logits
       averaged over queries; one hard negative text per image and one hard negative image per text,
       sampled in proportion to the ITC similarity (diagonal excluded).

Reference implementation: salesforce/LAVIS lavis/models/blip2_models/blip2_qformer.py (Blip2Qformer.forward),
including its label smoothing of 0.1 on ITC and ITG. Differences: one forward with the unimodal mask
computes the query and the text features of ITC together (LAVIS runs two forwards, which is the same
function); ITG's text attends the queries' keys through the causal mask instead of a key/value cache
from the query pass (again the same values, since queries never see text); ITC's negatives are the
local batch (LAVIS gathers across GPUs).

The text vocabulary is the recipe tokenizer's plus two ids of our own: [CLS] = vocab_size and
[DEC] = vocab_size + 1 (LAVIS adds [DEC] to BERT's tokenizer the same way).

The stage-1 model saves as our own checkpoint ("OcellusBlip2QFormerPretraining", the registry's
"blip2_stage1"); a BLIP-2 / MiniGPT-4 recipe's stage 2 takes its Q-Former with `qformer_from` (modeling.py).
Its recipe side (composition from a pretrained ViT, the caption data) is train/qformer_objectives.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError
from ocellus.hub.families import OWN_NAMES, Family
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.contrastive.losses import hard_negatives as itm_hard_negatives
from ocellus.models.contrastive.losses import info_nce, itg_loss, itm_loss
from ocellus.models.text.bert import MLMHead
from ocellus.models.families.blip2.modeling import vision_config, vision_hf_config
from ocellus.models.vision.vit import VisionTransformer

ARCHITECTURE, MODEL_TYPE = "OcellusBlip2QFormerPretraining", "ocellus_blip2_stage1"
MASKS = ("unimodal", "causal", "bidirectional")


# ---- the three masks ------------------------------------------------------------------------------
def qformer_mask(kind: str, num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Self-attention mask over [Q queries ; T text tokens], boolean [B, 1, Q+T, Q+T] (True = may attend).

    unimodal:      queries <-> queries, text <-> text             (ITC)
    causal:        queries <-> queries, text -> all queries + text at positions <= its own   (ITG)
    bidirectional: everything <-> everything                      (ITM)
    text_mask [B, T]: 1 = token, 0 = padding; padding keys are never attended (each token still
    sees itself, so a padding row is not empty)."""
    if kind not in MASKS:
        raise ConfigError(f"Q-Former mask {kind!r}; choose from {MASKS}")
    B, T = text_mask.shape
    Q, device = num_queries, text_mask.device
    is_text = torch.arange(Q + T, device=device) >= Q                                  # [Q+T]
    if kind == "bidirectional":
        allowed = torch.ones(Q + T, Q + T, dtype=torch.bool, device=device)
    else:
        same = is_text[:, None] == is_text[None, :]                                    # [Q+T, Q+T] same stream
        allowed = same
        if kind == "causal":
            pos = torch.arange(Q + T, device=device)
            allowed = (same & (pos[None, :] <= pos[:, None])) | (is_text[:, None] & ~is_text[None, :])
            allowed |= ~is_text[:, None] & ~is_text[None, :]                           # queries: all queries
    keys = torch.cat([torch.ones(B, Q, dtype=torch.bool, device=device), text_mask.bool()], dim=1)  # [B, Q+T]
    mask = allowed[None, None] & keys[:, None, None, :]                               # [B, 1, Q+T, Q+T]
    return mask | torch.eye(Q + T, dtype=torch.bool, device=device)[None, None]


# ---- the losses, as the paper / LAVIS state them ---------------------------------------------------
def itc_similarity(query_feats: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
    """query_feats [B_i, Q, E], text_feat [B_t, E] (both L2-normalised) -> [B_i, B_t]: for each
    image-text pair the highest query-text cosine."""
    return torch.einsum("iqe,te->itq", query_feats, text_feat).amax(dim=-1)


def itc_loss(sim: torch.Tensor, temperature: torch.Tensor | float, label_smoothing: float = 0.1) -> torch.Tensor:
    """sim [B, B] (image i, text t), the matching pairs on the diagonal: InfoNCE (losses.info_nce) of
    sim / temperature, label-smoothed as LAVIS."""
    return info_nce(sim / temperature, label_smoothing=label_smoothing)


def hard_negatives(sim: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP-2's one similarity matrix [B_i, B_t] -> (text index per image [B], image index per text [B]),
    drawn by losses.hard_negatives over sim and sim.t() (diagonal excluded)."""
    return itm_hard_negatives(sim, sim.t(), None, generator)


# ---- the stage-1 model ------------------------------------------------------------------------------
@dataclass
class Stage1Output:
    loss: torch.Tensor
    loss_itc: torch.Tensor
    loss_itg: torch.Tensor
    loss_itm: torch.Tensor
    sim: torch.Tensor          # [B, B] ITC similarity (before temperature)


class ContrastiveHead(nn.Module):
    """ITC's projections to the shared embedding space and the learned temperature (init 0.07)."""

    def __init__(self, dim: int, embed_dim: int):
        super().__init__()
        self.vision_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.temp = nn.Parameter(torch.tensor(0.07))

    def temperature(self) -> torch.Tensor:
        return self.temp.clamp(0.001, 0.5)   # LAVIS clamps it in place every step; the same values


class QFormerPretraining(nn.Module):
    """A frozen image encoder + a Q-Former with text input + the ITC / ITG / ITM heads."""

    def __init__(self, vision_tower: VisionTransformer, qformer: QFormer, embed_dim: int = 256,
                 label_smoothing: float = 0.1):
        super().__init__()
        cfg = qformer.config
        if qformer.embeddings is None or not cfg.text_input:
            raise ConfigError("stage-1 pretraining needs a Q-Former with text input (text_input=True)")
        if vision_tower.config.hidden_size != cfg.encoder_hidden_size:
            raise ConfigError(f"the Q-Former cross-attends to {cfg.encoder_hidden_size}-wide features, the vision "
                              f"tower gives {vision_tower.config.hidden_size}")
        self.vision_tower = vision_tower
        self.qformer = qformer
        self.itc = ContrastiveHead(cfg.hidden_size, embed_dim)
        self.itm_head = nn.Linear(cfg.hidden_size, 2)
        self.lm_head = MLMHead(cfg.bert())            # BertLMHeadModel's head, decoder tied to the word embeddings
        self.lm_head.decoder.weight = qformer.embeddings.word_embeddings.weight
        self.label_smoothing = label_smoothing
        self.family_name = "blip2_stage1"

    @property
    def cls_token_id(self) -> int:
        return self.qformer.config.vocab_size - 2

    @property
    def dec_token_id(self) -> int:
        return self.qformer.config.vocab_size - 1

    def parts(self) -> dict[str, nn.Module]:
        return {"vision": self.vision_tower,
                "connector": nn.ModuleList([self.qformer, self.itc, self.itm_head, self.lm_head])}

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vision_tower.parameters()).dtype
        return self.vision_tower(pixel_values.to(dtype)).last_hidden_state              # [B, S, Dv]

    def itm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """ITM's score: queries and text under the BIDIRECTIONAL mask, the head on each query output,
        averaged over queries -> match logits [N, 2]."""
        Q = self.qformer.config.num_query_tokens
        h = self.qformer(image, input_ids=input_ids, mask=qformer_mask("bidirectional", Q, attention_mask))
        return self.itm_head(h[:, :Q]).mean(dim=1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: torch.Generator | None = None, **unused) -> Stage1Output:
        """input_ids [B, T]: [CLS] + caption tokens (+ eos), padded; attention_mask [B, T]."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise InputError(f"input_ids and attention_mask must both be [B, T]; got {tuple(input_ids.shape)} and "
                             f"{tuple(attention_mask.shape)}")
        if bool((input_ids[:, 0] != self.cls_token_id).any()):
            raise InputError(f"stage-1 text must start with the [CLS] id {self.cls_token_id} (see encode_caption)")
        Q = self.qformer.config.num_query_tokens
        image = self.image_embeds(pixel_values)                                          # [B, S, Dv]

        # ITC: queries and text side by side, blind to each other
        h = self.qformer(image, input_ids=input_ids, mask=qformer_mask("unimodal", Q, attention_mask))
        query_feats = F.normalize(self.itc.vision_proj(h[:, :Q]), dim=-1)              # [B, Q, E]
        text_feat = F.normalize(self.itc.text_proj(h[:, Q]), dim=-1)                   # [B, E]  ([CLS])
        sim = itc_similarity(query_feats, text_feat)                                    # [B, B]
        loss_itc = itc_loss(sim, self.itc.temperature(), self.label_smoothing)

        # ITM: positives, (hard negative image, text), (image, hard negative text); bidirectional
        neg_text, neg_image = hard_negatives(sim.detach() / self.itc.temperature().detach(), generator)
        loss_itm = itm_loss(self.itm_logits, input_ids, attention_mask, image, neg_text, neg_image)

        # ITG: [DEC] instead of [CLS]; text reads the queries and its own past
        dec_ids = input_ids.clone()
        dec_ids[:, 0] = self.dec_token_id
        h_itg = self.qformer(image, input_ids=dec_ids, mask=qformer_mask("causal", Q, attention_mask))
        loss_itg = itg_loss(self.lm_head(h_itg[:, Q:]), dec_ids, attention_mask, self.label_smoothing)

        return Stage1Output(loss=loss_itc + loss_itg + loss_itm, loss_itc=loss_itc, loss_itg=loss_itg,
                            loss_itm=loss_itm, sim=sim)


# ---- checkpoint (our own format) -------------------------------------------------------------------
def build_stage1(cfg: dict) -> QFormerPretraining:
    vision = VisionTransformer(vision_config(dict(cfg["vision_config"])))
    qcfg = QFormerConfig.from_hf({**cfg["qformer_config"], "use_qformer_text_input": True},
                                 int(cfg.get("num_query_tokens", 32)), encoder_hidden_size=vision.config.hidden_size)
    return QFormerPretraining(vision, QFormer(qcfg), embed_dim=int(cfg.get("image_text_hidden_size", 256)),
                              label_smoothing=float(cfg.get("label_smoothing", 0.1)))


def stage1_hf_config(model: QFormerPretraining) -> dict:
    return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE,
            "vision_config": vision_hf_config(model.vision_tower.config), "qformer_config": model.qformer.config.to_hf(),
            "num_query_tokens": model.qformer.config.num_query_tokens,
            "image_text_hidden_size": model.itc.vision_proj.out_features, "label_smoothing": model.label_smoothing}


def family(architecture: str | None = None) -> Family:
    """The registry's Family (hub/families.py "blip2_stage1"): our own names, config.json as above."""
    return Family(name="blip2_stage1", model_class=QFormerPretraining, build=build_stage1,
                  keymap=OWN_NAMES, hf_config=stage1_hf_config,
                  tied=lambda m: ("lm_head.decoder.weight", "lm_head.decoder.bias"))
