"""BLIP (Li et al. 2022, sec. 3.1-3.2): ONE real forward of the model, LM and ITM recomputed here from
the paper on the same tensors.

  LM   the image-grounded decoder reads "[DEC] caption" with CAUSAL self-attention (a token sees itself
       and earlier tokens, never padding), the shared cross-attention to the image and the shared FFN;
       position t predicts token t + 1 (labels shifted), padding targets skipped, label smoothing 0.1
  ITM  the image-grounded encoder reads "[ENC] caption" bidirectionally; the head's class 1 = match on
       the B positives, 0 on the 2B (image, hard negative text) / (hard negative image, text) pairs
  ITC  the same momentum-distilled queue ITC as ALBEF (test_albef_step.py); here only its total.

The decoder's layers are run here by hand with a hand-built causal mask, so a decoder that is not causal,
skips [DEC], or shifts its labels wrongly gives another number.
"""
import pytest
import torch
import torch.nn.functional as F

import ocellus.models.contrastive.blip as blip_mod

from test_albef import random_batch
from test_blip import tiny_blip

pytestmark = pytest.mark.usefixtures("one_thread")

B, EPS = 8, 0.1


def _smoothed_ce(logits, target):
    logp = torch.log_softmax(logits, dim=-1)
    return -(1 - EPS) * logp.gather(-1, target[:, None])[:, 0] - EPS * logp.mean(-1)


def test_lm_is_causal_shifted_label_smoothed_ce_of_the_dec_sequence():
    model = tiny_blip()
    px, ids, mask = random_batch(B=B)
    with torch.no_grad():
        out = model(px, ids, mask, objectives=("lm",))
        image = model.visual_encoder(px).last_hidden_state                         # [B, S, Dv]
        dec_ids = ids.clone()
        dec_ids[:, 0] = model.config.dec_token_id                                  # [DEC] replaces [CLS]
        T = ids.shape[1]
        causal = torch.tensor([[j <= i for j in range(T)] for i in range(T)])     # [T, T]
        attn = causal[None, None] & mask.bool()[:, None, None, :] | torch.eye(T, dtype=torch.bool)  # [B, 1, T, T]
        dec = model.text_decoder
        x = dec.embeddings(dec_ids)
        for layer in dec.layers:                     # SA (decoder's own) -> CA (shared) -> FFN (shared)
            x = layer.ffn(layer.crossattention(layer.attention(x, attn), None, kv=image))
        logits = dec.mlm(x)                                                        # [B, T, V]
        rows = [(b, t) for b in range(B) for t in range(T - 1) if mask[b, t + 1]]
        lm = _smoothed_ce(torch.stack([logits[b, t] for b, t in rows]),
                          torch.tensor([int(dec_ids[b, t + 1]) for b, t in rows])).mean()
    assert out.loss_itc is None and out.loss_itm is None
    torch.testing.assert_close(out.loss_lm, lm)
    torch.testing.assert_close(out.loss, lm)


def test_lm_logits_at_a_position_never_depend_on_later_tokens():
    """Causality as a property of the training loss: the LM loss of the first k targets does not change
    when later tokens of the caption change (a bidirectional decoder would peek)."""
    model = tiny_blip()
    px, ids, mask = random_batch(B=B)
    mask = torch.ones_like(mask)
    later = ids.clone()
    later[:, 4:] = (later[:, 4:] + 3) % 38 + 2
    with torch.no_grad():
        dec_a, dec_b = ids.clone(), later.clone()
        dec_a[:, 0] = dec_b[:, 0] = model.config.dec_token_id
        image = model.visual_encoder(px).last_hidden_state
        la = model.decoder_logits(dec_a, mask, image)
        lb = model.decoder_logits(dec_b, mask, image)
    torch.testing.assert_close(la[:, :4], lb[:, :4])
    assert not torch.allclose(la[:, 4:], lb[:, 4:])


def test_itm_reads_enc_grounded_states_with_match_label_one(monkeypatch):
    model = tiny_blip()
    with torch.no_grad():                    # BERT's init (std 0.02) barely reads the image: make ITM depend on it
        for name, p in model.text_encoder.named_parameters():
            if "crossattention" in name and name.endswith("weight") and "LayerNorm" not in name:
                p.mul_(20.0)
    px, ids, mask = random_batch(B=B)
    seen = {}
    real = blip_mod.hard_negatives

    def spy(sim_i2t, sim_t2i, ids=None, generator=None):
        seen["neg"] = real(sim_i2t, sim_t2i, ids, generator)
        return seen["neg"]
    monkeypatch.setattr(blip_mod, "hard_negatives", spy)
    with torch.no_grad():
        out = model(px, ids, mask, objectives=("itc", "itm"), generator=torch.Generator().manual_seed(0))
        neg_t, neg_i = seen["neg"]
        image = model.visual_encoder(px).last_hidden_state
        enc = model.text_encoder
        T = ids.shape[1]
        ids3 = torch.cat([ids, ids, ids[neg_t]])
        ids3[:, 0] = model.config.enc_token_id                                     # [ENC] replaces [CLS]
        mask3 = torch.cat([mask, mask, mask[neg_t]])
        img3 = torch.cat([image, image[neg_i], image])
        attn = mask3.bool()[:, None, None, :].expand(-1, 1, T, T) | torch.eye(T, dtype=torch.bool)   # bidirectional
        x = enc.embeddings(ids3)
        for layer in enc.layers:
            x = layer.ffn(layer.crossattention(layer.attention(x, attn), None, kv=img3))
        itm = F.cross_entropy(model.itm_head(x[:, 0]), torch.tensor([1] * B + [0] * 2 * B))
    assert out.loss_lm is None
    torch.testing.assert_close(out.loss_itm, itm)
    torch.testing.assert_close(out.loss, out.loss_itc + itm)
