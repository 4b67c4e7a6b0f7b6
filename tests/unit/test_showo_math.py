"""Show-o written out by hand on the same weights: the transformer (QK-norm before RoPE, pre-norm blocks,
SwiGLU, the omni-attention mask from its definition), MaskGIT decoding with guidance against a greedy
reference, batch rows independent of each other, decided tokens never redrawn, and the text continuation
restricted to words. The weights are redrawn from N(0, 1/fan_in) and the norms shifted so attention is far
from uniform (a dropped norm or a wrong mask moves the logits by O(1), not 1e-5)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.unified import BOS, PAD, WordVocab
from ocellus.models.unified.showo import build_showo

WORDS = ["red", "blue", "circle", "square"]


def spread(seed=0, dim=32):
    torch.manual_seed(seed)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    m = build_showo({"dim": dim, "num_layers": 2, "num_heads": 2}, tok, WordVocab(WORDS), 16).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.parts()["transformer"].named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:                                                          # norm weights: not all ones
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return m


def rms(x, w, eps):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rope(x, pos, theta=10000.0):
    """x [B, H, T, D], pos [B, T]: rotate_half RoPE over all D dims."""
    D = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos[:, None, :, None].double() * inv                             # [B, 1, T, D/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def omni_mask_by_definition(is_image, keep):
    """[B, T, T]: j <= i, or i and j in the same contiguous run of image tokens; pad columns out; i sees i."""
    B, T = is_image.shape
    out = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        run, r = [0] * T, 0
        for t in range(T):
            if is_image[b, t] and (t == 0 or not is_image[b, t - 1]):
                r += 1
            run[t] = r if is_image[b, t] else 0
        for i in range(T):
            for j in range(T):
                see = (j <= i or (run[i] > 0 and run[i] == run[j])) and bool(keep[b, j])
                out[b, i, j] = see or i == j
    return out


@torch.no_grad()
def reference_logits(m, ids):
    v, eps = m.vocab, m.cfg.eps
    keep = ids != PAD
    pos = (keep.long().cumsum(1) - 1).clamp(min=0)
    is_image = (ids >= v.code_base) | (ids == v.mask)
    allowed = omni_mask_by_definition(is_image, keep)[:, None]             # [B, 1, T, T]
    B, T = ids.shape
    H = m.cfg.num_heads
    x = m.embed_tokens.weight[ids]
    for layer in m.layers:
        a = layer.self_attn
        h = rms(x, layer.input_layernorm.weight, eps)
        heads = lambda t: t.view(B, T, H, -1).transpose(1, 2)
        q = rope(rms(heads(h @ a.q_proj.weight.T), a.q_norm.weight, eps), pos)
        k = rope(rms(heads(h @ a.k_proj.weight.T), a.k_norm.weight, eps), pos)
        val = heads(h @ a.v_proj.weight.T)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        p = s.masked_fill(~allowed, float("-inf")).softmax(-1)
        x = x + (p @ val).transpose(1, 2).reshape(B, T, -1) @ a.o_proj.weight.T
        h = rms(x, layer.post_attention_layernorm.weight, eps)
        mlp = layer.mlp
        x = x + (F.silu(h @ mlp.gate_proj.weight.T) * (h @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return rms(x, m.norm.weight, eps) @ m.lm_head.weight.T


def test_logits_equal_the_hand_written_transformer_on_padded_mixed_rows():
    m = spread()
    codes = torch.randint(0, 16, (4, 4), generator=torch.Generator().manual_seed(3))
    t2i, _ = m.sequence("red circle square", codes, "t2i")
    i2t, _ = m.sequence("blue", codes.flip(0), "i2t")
    width = max(len(t2i), len(i2t))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in (t2i, i2t)])
    ids[0, -5:-2] = m.vocab.mask                                             # some <mask> slots in the image
    torch.testing.assert_close(m.logits(ids), reference_logits(m, ids), atol=2e-4, rtol=1e-4)


def test_maskgit_one_step_greedy_is_the_argmax_of_the_guided_logits():
    """steps=1, (near) zero temperature, no confidence noise: every slot is argmax((1+w) l_cond - w l_uncond)."""
    m = spread()
    caps, w = ["red circle", "blue square"], 1.5
    ids, slots = m.prompts(caps)
    logits = reference_logits(m, ids)[slots].view(4, m.N, -1)[..., m.vocab.code_base:]
    want = ((1 + w) * logits[:2] - w * logits[2:]).argmax(-1)
    got = m.generate_image_ids(caps, steps=1, guidance_weight=w, temperature=1e-6, choice_temperature=0.0,
                               generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, want)


def test_maskgit_rows_of_a_batch_decode_as_they_do_alone():
    m = spread()
    caps = ["red circle square", "blue"]
    kw = dict(steps=4, guidance_weight=2.0, temperature=1e-6, choice_temperature=0.0)
    both = m.generate_image_ids(caps, generator=torch.Generator().manual_seed(0), **kw)
    for i, c in enumerate(caps):
        alone = m.generate_image_ids([c], generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(both[i], alone[0])


def _spy_inputs(m) -> list:
    """The ids of every m.logits call from now on, in order (the call goes through unchanged)."""
    seen, real = [], m.logits

    def spy(ids, keep=None):
        seen.append(ids.clone())
        return real(ids, keep)
    m.logits = spy
    return seen


def test_maskgit_never_redraws_a_decided_token():
    m = spread()
    seen = _spy_inputs(m)
    out = m.generate_image_ids(["red circle", "blue"], steps=6, generator=torch.Generator().manual_seed(0))
    _, slots = m.prompts(["red circle", "blue"])
    inputs = [s[slots].view(4, m.N)[:2] for s in seen] + [out + m.vocab.code_base]
    for before, after in zip(inputs, inputs[1:]):
        decided = before != m.vocab.mask
        assert torch.equal(after[decided], before[decided])


def test_text_continuation_never_emits_an_image_marker():
    m = spread()
    real = m.logits

    def favour_markers(ids, keep=None):
        out = real(ids, keep).clone()
        out[..., m.vocab.boi:] += 1e4                                        # markers and codes would win
        return out
    m.logits = favour_markers
    said = m.continue_text([[BOS] + m.text.encode("red")], max_new_tokens=3)[0]
    assert said and set(said.split()) <= set(WORDS)


def test_unconditional_training_rows_keep_the_caption_slots_as_pad():
    """Dropped captions become <pad> of the same length (the layout the inference prompts use), not nothing."""
    m = spread()
    codes = torch.randint(0, 16, (4, 4))
    cond, labels = m.sequence("red circle", codes, "t2i")
    uncond, uncond_labels = m.sequence("red circle", codes, "t2i", uncond=True)
    assert len(uncond) == len(cond) and uncond_labels == labels
    assert uncond[1:3] == [PAD, PAD] and uncond[3:] == cond[3:]


def test_training_masks_the_rounded_cosine_share_of_each_rows_codes():
    """Per row, round(cos(pi/2 r) n) of its n codes become <mask> (at least one), r ~ U(0, 1) per row: MaskGIT's
    cosine schedule counted as Show-o's training code counts it (rounded, where MaskGIT's paper takes the ceiling)."""
    m = spread()
    g = torch.Generator().manual_seed(0)
    rows = [m.sequence(c, torch.randint(0, 16, (4, 4), generator=g), "t2i")
            for c in ("red circle", "blue square", "red", "blue circle")]
    width = max(len(r[0]) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r[0])) + r[0] for r in rows])
    labels = torch.tensor([[-100] * (width - len(r[1])) + r[1] for r in rows])
    seen = _spy_inputs(m)
    m(ids, attention_mask=(ids != PAD).long(), labels=labels, generator=torch.Generator().manual_seed(7))
    r = torch.rand(4, 1, generator=torch.Generator().manual_seed(7))
    want = torch.round(torch.cos(math.pi / 2 * r) * 16).clamp(min=1).long()[:, 0]
    assert want.tolist() != torch.ceil(torch.cos(math.pi / 2 * r) * 16).long()[:, 0].tolist()   # the rules differ here
    assert (seen[0] == m.vocab.mask).sum(1).tolist() == want.tolist()
