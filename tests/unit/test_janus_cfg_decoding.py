"""Janus image generation against a hand-written greedy loop, and batch rows independent of each other.

Reference (deepseek-ai/Janus generation_inference.py): the conditional prompt <bos> caption <boi> and its
unconditional partner (caption -> <pad>) are both run; each step the next code is
argmax(l_uncond + s (l_cond - l_uncond)) over gen_head(last hidden state), and that code is appended to BOTH
rows. Code slots are embedded as gen_aligner(gen_embed(c)) (written out below). The loop below reruns the full sequence every step (no cache, no batching): the engine's cached,
interleaved, left-padded batch must draw exactly the same codes.
"""
import torch

from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.unified import BOS, WordVocab
from ocellus.models.unified.janus import build_janus

WORDS = ["red", "blue", "circle", "square"]


def tiny(seed=1):
    torch.manual_seed(seed)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    m = build_janus({"dim": 32, "num_layers": 2, "num_heads": 2, "vit_dim": 32, "vit_layers": 1, "vit_patch": 4,
                     "gen_embed_dim": 8}, tok, WordVocab(WORDS), 16).eval()
    with torch.no_grad():   # at init std 0.02 the draw hardly reads the prompt: make it
        for mod in (m.decoder, m.gen_embed, m.gen_aligner, m.gen_head):
            for p in mod.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.5)
    return m


def embed_by_hand(m, rows):
    """Words by the decoder's table, code slots (gen_base + c) by gen_aligner(gen_embed row c)."""
    out = []
    for row in rows.tolist():
        out.append(torch.stack([m.gen_aligner(m.gen_embed.weight[t - m.gen_base]) if t >= m.gen_base
                                else m.decoder.embed_tokens.weight[t] for t in row]))
    return torch.stack(out)


@torch.no_grad()
def reference_codes(m, caption, scale):
    cond = [BOS] + m.text.encode(caption) + [m.boi]
    uncond = m.unconditional_prompt(torch.tensor([cond]), torch.ones(1, len(cond), dtype=torch.long))[0].tolist()
    codes = []
    for _ in range(m.grid * m.grid):
        rows = torch.tensor([cond, uncond])
        h = m.decoder(inputs_embeds=embed_by_hand(m, rows)).hidden_states[:, -1]      # [2, D]
        lc, lu = m.gen_head(h).float()
        code = int((lu + scale * (lc - lu)).argmax())
        codes.append(code)
        cond, uncond = cond + [m.gen_base + code], uncond + [m.gen_base + code]
    return torch.tensor(codes).view(m.grid, m.grid)


def test_greedy_generation_equals_the_uncached_reference_loop():
    m = tiny()
    want = reference_codes(m, "red circle", 2.0)
    got = m.generate_images(["red circle"], guidance_scale=2.0, temperature=0)
    torch.testing.assert_close(got, m.tokenizer.decode_ids(want[None]).clamp(-1, 1))


def test_batched_rows_draw_what_each_caption_draws_alone():
    m = tiny()
    caps = ["red circle square", "blue"]                                   # different lengths: left padding
    both = m.generate_images(caps, guidance_scale=2.0, temperature=0)
    for i, c in enumerate(caps):
        want = m.tokenizer.decode_ids(reference_codes(m, c, 2.0)[None]).clamp(-1, 1)
        torch.testing.assert_close(both[i:i + 1], want)
