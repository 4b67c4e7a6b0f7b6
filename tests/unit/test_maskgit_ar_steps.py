"""One real step of MaskGIT (training and parallel decoding) and of the autoregressive image-token model,
recomputed by hand.

MaskGIT (Chang et al. 2022): training masks ceil(cos(pi/2 r) N) tokens (r ~ U(0,1)) and takes the
cross-entropy on the masked ones only; decoding step s of S samples every masked token, scores it by
log p + choice_temperature (1 - (s+1)/S) Gumbel, keeps already fixed tokens (infinite confidence) and
re-masks the floor(cos(pi/2 (s+1)/S) N) LEAST confident.
Taming Transformers (Esser et al. 2021): p(s) = prod_i p(s_i | c, s_<i): the class token c predicts s_1,
s_i predicts s_{i+1}.
"""
import math

import torch
import torch.nn.functional as F

from ocellus.models.generative.ar_image import ARImage, ar_decoder_config
from ocellus.models.generative.maskgit import MaskGIT, TokenTransformerConfig
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.text.decoder import DecoderLM

K, GRID, N = 32, 4, 16


def _vq():
    torch.manual_seed(0)
    return VQVAE(VQConfig(channels=8, num_codes=K))


def _maskgit(p_uncond=0.5):
    vq = _vq()
    return MaskGIT(TokenTransformerConfig(K, GRID, num_classes=10, dim=32, num_layers=1, num_heads=2,
                                          p_uncond=p_uncond), vq)


def _gumbel(u):
    return -torch.log(-torch.log(u.clamp_min(1e-20)))


def test_maskgit_training_step_masks_by_cosine_and_scores_masked_tokens_only():
    m = _maskgit().train()
    x, labels = torch.rand(6, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3, 4, 5])
    loss = m(x, labels, generator=torch.Generator().manual_seed(1)).loss
    g = torch.Generator().manual_seed(1)                                               # replay the step's draws
    drop = torch.rand(6, generator=g) < 0.5
    cond = torch.where(drop, torch.full_like(labels, 10), labels)                     # 10 = null class
    r = torch.rand(6, generator=g)
    n_mask = [min(max(math.ceil(math.cos(math.pi / 2 * v) * N), 1), N) for v in r.tolist()]
    keys = torch.rand(6, N, generator=g)                                               # a random order per row
    masked = torch.zeros(6, N, dtype=torch.bool)
    for b in range(6):
        masked[b, keys[b].topk(n_mask[b], largest=False).indices] = True              # n_mask random positions
    with torch.no_grad():
        ids = m.tokenizer.encode_to_ids(x).flatten(1)                                  # [6, N]
    logits = m.logits(ids.masked_fill(masked, K), cond)                                # [6, N, K], K = [MASK]
    assert drop.any() and (~drop).any() and len(set(n_mask)) > 1
    torch.testing.assert_close(loss, F.cross_entropy(logits[masked], ids[masked]))


def test_maskgit_decoding_remasks_the_least_confident_and_keeps_fixed_tokens():
    """generate_tokens against a hand-written loop on the same (stubbed, step-dependent) logits and draws."""
    m = _maskgit().eval()
    B, S, temp, ct = 2, 4, 0.8, 4.5
    torch.manual_seed(1)
    table = [3 * torch.randn(B, N, K) for _ in range(S)]                               # logits of each step
    seen = []

    def stub(ids, labels):
        seen.append(ids.clone())
        return table[len(seen) - 1]
    m.logits = stub
    out = m.generate_tokens(torch.tensor([1, 2]), steps=S, temperature=temp, choice_temperature=ct,
                            generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    ids, before = torch.full((B, N), K), N
    for s in range(S):
        assert torch.equal(seen[s], ids)                                               # what step s was given
        masked = ids == K
        logp = F.log_softmax(table[s] / temp, -1)
        draw = (logp + _gumbel(torch.rand(logp.shape, generator=g))).argmax(-1)       # Gumbel-max sample
        new = torch.where(masked, draw, ids)                                           # fixed tokens stay
        conf = logp.gather(-1, new[..., None])[..., 0]
        conf = conf + ct * (1 - (s + 1) / S) * _gumbel(torch.rand(conf.shape, generator=g))
        conf[~masked] = float("inf")                                                   # never re-mask fixed ones
        after = max(0, min(math.floor(math.cos(math.pi / 2 * (s + 1) / S) * N), before - 1))
        low = conf.topk(after, dim=1, largest=False).indices                           # the least confident
        ids = new.scatter(1, low, K)
        assert (ids[~masked] == seen[s][~masked]).all()
        assert (ids == K).sum(1).tolist() == [after] * B
        before = after
    assert torch.equal(out, ids) and (out < K).all()


def _ar():
    vq = _vq().eval()
    return ARImage(DecoderLM(ar_decoder_config(K, 10, GRID, dim=32, num_layers=1, num_heads=2)), vq, 10, GRID)


def test_ar_image_loss_is_next_token_with_the_class_token_predicting_the_first_code():
    m = _ar().train()
    x, labels = torch.rand(3, 1, 16, 16) * 2 - 1, torch.tensor([0, 4, 9])
    loss = m(pixel_values=x, labels=labels).loss
    with torch.no_grad():
        codes = m.tokenizer.encode_to_ids(x).flatten(1)                                # [3, N]
    seq = torch.cat([K + labels[:, None], codes], 1)                                   # [3, 1+N]: class, codes
    logits = m.decoder(input_ids=seq).logits                                           # [3, 1+N, V] causal
    # position i predicts token i+1: position 0 (the class) -> code 1, ..., position N-1 -> code N
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), seq[:, 1:], reduction="none")  # [3, N]
    torch.testing.assert_close(loss, ce.mean())
    # the first code's term depends on the class: another label changes it
    other = m.decoder(input_ids=torch.cat([K + (labels[:, None] + 1) % 10, codes], 1)).logits
    assert not torch.allclose(F.cross_entropy(other[:, 0], codes[:, 0]), ce[:, 0].mean())


def test_maskgit_logit_i_reads_token_i_stream_after_the_class_prefix():
    """With no transformer block the network is a per-position readout, so the wiring is visible exactly:
    logits[:, i] = head(LN(tok_embed(ids_i) + pos_{i+1})) (position 0 holds the class token, dropped)."""
    vq = _vq()
    m = MaskGIT(TokenTransformerConfig(K, GRID, num_classes=10, dim=32, num_layers=0), vq).eval()
    ids = torch.randint(0, K + 1, (2, N))                                              # codes and [MASK]
    got = m.logits(ids, torch.tensor([3, 10]))                                         # [2, N, K]
    want = m.head(m.norm(m.tok_embed(ids) + m.pos[1:]))
    torch.testing.assert_close(got, want)


def test_ar_image_sampling_logits_forbid_every_class_token():
    """At sampling time only codes may come next: every class id (K .. K+9) has logit -inf, no code does."""
    m = _ar().eval()
    prompt = torch.tensor([[K + 0, 5, 7], [K + 9, 1, 2]])                              # class, two codes
    logits = m(input_ids=prompt).logits                                                # [2, 3, K + 10]
    assert torch.isneginf(logits[..., K:]).all() and torch.isfinite(logits[..., :K]).all()
