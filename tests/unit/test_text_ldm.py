"""Text-to-image latent diffusion (Stable Diffusion's conditioning at toy scale), recomputed by hand.

Rombach et al. 2022 sec. 3.3: Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V with Q = W_q phi(z_t) (image
tokens) and K = W_k tau(y), V = W_v tau(y) (the caption's token states); padding tokens are masked out of
the softmax. Ho & Salimans 2021 with SD's null condition: eps = eps(tau("")) + s (eps(tau(y)) - eps(tau(""))),
and training replaces a caption by "" with probability p_uncond; loss = ||eps - eps_theta(z_t, t, tau(y'))||^2.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ocellus.cli import main
from ocellus.data.bpe import train_bpe
from ocellus.data.shapes import COLOURS, Obj, render, Scene, SHAPES
from ocellus.errors import ConfigError, InputError
from ocellus.eval.image_quality import dominant_colour, train_judge
from ocellus.models.contrastive.clip import build_dual_encoder
from ocellus.models.generative.checkpoint import build, load_generator, save_generator
from ocellus.models.generative.text_conditioning import TextDiffusionModel
from ocellus.models.generative.unet import AttentionBlock
from ocellus.models.text.clip_text import encode_texts, TextTowerConfig, TextTransformer
from ocellus.train.generative import image_data, measure_text, run_generative_recipe, shape_prompts, shape_scenes

T = 40
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "generation" / "ldm_text_shapes.yaml"
PROMPTS = ["A red circle.", "A blue star."]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(shape_prompts() * 3, 300, eos_token="<|endoftext|>")


def _tower(tok, hidden=16) -> TextTransformer:
    torch.manual_seed(1)
    return TextTransformer(TextTowerConfig.clip(vocab_size=len(tok), hidden_size=hidden, intermediate_size=32,
                                                num_layers=1, num_heads=2, max_position_embeddings=16,
                                                eos_token_id=tok.eos_token_id))


def _model(tok, p_uncond=0.5) -> TextDiffusionModel:
    tower = _tower(tok)
    torch.manual_seed(0)
    m = build({"kind": "diffusion", "text_encoder": tower.config.to_hf(), "image_size": 8, "p_uncond": p_uncond,
               "unet": {"in_channels": 3, "channels": 8, "channel_mults": [1, 2], "attention_levels": [0, 1],
                        "num_heads": 2, "groups": 4},
               "diffusion": {"num_train_timesteps": T}})
    m.conditioner.text_model.load_state_dict(tower.state_dict())
    m.conditioner.tokenizer = tok
    torch.nn.init.normal_(m.unet.conv_out.weight, std=0.2)   # the zero-init head would predict eps = 0 for any input
    return m


def _states(m, texts):
    """tau(texts): the tower's last hidden states and mask of captions tokenized on their own."""
    b = encode_texts(texts, m.conditioner.tokenizer, 16)
    with torch.no_grad():
        return m.conditioner.text_model(b["input_ids"], b["attention_mask"]).last_hidden_state, b["attention_mask"]


def _abar(m):
    c = m.diffusion.cfg
    return torch.cumprod(1 - torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64), 0)


def _b(v, like):
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


# -- cross-attention ------------------------------------------------------------------------------------

def _attention(q, k, v, heads, mask=None):
    """softmax(q k^T / sqrt(d) [+ -inf on masked keys]) v per head; q [B, N, C], k/v [B, S, C]."""
    B, N, C = q.shape
    d = C // heads
    split = lambda x: x.view(B, x.shape[1], heads, d).permute(0, 2, 1, 3)                  # [B, H, *, d]
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)                           # [B, H, N, S]
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ split(v)).permute(0, 2, 1, 3).reshape(B, N, C)


def test_cross_attention_is_the_formula_and_padding_tokens_do_not_change_it():
    torch.manual_seed(0)
    blk = AttentionBlock(8, num_heads=2, groups=4, context_dim=6)
    x, ctx = torch.randn(2, 8, 2, 3), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    Wk, Wv = blk.to_kv.weight.chunk(2), blk.to_kv.bias.chunk(2)
    # the whole block: tokens + self-attention, then + cross-attention of the LayerNormed tokens
    h = F.group_norm(x, 4, blk.norm.weight, blk.norm.bias).flatten(2).transpose(1, 2)      # [B, 6, 8]
    q, k, v = (h @ W.t() + b for W, b in zip(blk.qkv.weight.chunk(3), blk.qkv.bias.chunk(3)))
    tokens = x.flatten(2).transpose(1, 2) + _attention(q, k, v, 2) @ blk.proj.weight.t() + blk.proj.bias
    hq = F.layer_norm(tokens, (8,), blk.norm_cross.weight, blk.norm_cross.bias)
    y = _attention(hq @ blk.to_q.weight.t() + blk.to_q.bias, ctx @ Wk[0].t() + Wv[0], ctx @ Wk[1].t() + Wv[1], 2, mask)
    want = tokens + y @ blk.cross.weight.t() + blk.cross.bias                              # [B, 6, 8]
    with torch.no_grad():
        got = blk(x, ctx, mask)
        torch.testing.assert_close(got, want.transpose(1, 2).reshape(2, 8, 2, 3))
        # padding: other values under mask 0, and one more pad token, give the same output
        junk = torch.where(mask[..., None].bool(), ctx, torch.randn(2, 4, 6) * 10)
        longer, longer_mask = torch.cat([junk, torch.randn(2, 1, 6)], 1), F.pad(mask, (0, 1))
        torch.testing.assert_close(blk(x, longer, longer_mask), got)
        assert not torch.allclose(blk(x, junk, torch.ones_like(mask)), got, atol=1e-3)   # unmasked, they would


def test_cross_attention_matches_diffusers_attention():
    """The cross-attention sublayer = diffusers' Attention (SD's attn2) with the same weights and the additive
    encoder mask Transformer2DModel builds from a 0/1 mask."""
    Attention = pytest.importorskip("diffusers.models.attention_processor").Attention
    torch.manual_seed(0)
    blk = AttentionBlock(8, num_heads=2, groups=4, context_dim=6)
    ref = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4, bias=True, out_bias=True)
    with torch.no_grad():
        ref.to_q.weight.copy_(blk.to_q.weight), ref.to_q.bias.copy_(blk.to_q.bias)
        (kw, vw), (kb, vb) = blk.to_kv.weight.chunk(2), blk.to_kv.bias.chunk(2)
        ref.to_k.weight.copy_(kw), ref.to_k.bias.copy_(kb), ref.to_v.weight.copy_(vw), ref.to_v.bias.copy_(vb)
        ref.to_out[0].weight.copy_(blk.cross.weight), ref.to_out[0].bias.copy_(blk.cross.bias)
        h, ctx, mask = torch.randn(2, 6, 8), torch.randn(2, 4, 6), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
        additive = ((1 - mask.float()) * -10000.0)[:, None]                                # [B, 1, S]
        torch.testing.assert_close(blk.cross_attend(h, ctx, mask), ref(h, ctx, attention_mask=additive),
                                   atol=1e-5, rtol=1e-4)


def test_cross_attention_bad_context_is_a_clear_error():
    blk = AttentionBlock(8, num_heads=2, groups=4, context_dim=6)
    with pytest.raises(InputError, match="context must be"):
        blk.cross_attend(torch.randn(1, 6, 8), torch.randn(1, 4, 5))
    with pytest.raises(InputError, match="context_mask"):
        blk.cross_attend(torch.randn(1, 6, 8), torch.randn(1, 4, 6), torch.ones(1, 3))


# -- training and sampling ------------------------------------------------------------------------------

def test_training_step_is_eps_mse_with_captions_dropped_to_the_empty_caption(tok):
    m = _model(tok, p_uncond=0.5)
    captions = [shape_prompts()[i] for i in (0, 7, 12, 19, 23, 30, 38, 4)]
    b = encode_texts(captions, tok, 16)
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    torch.manual_seed(7)
    loss = m.train()(x, b["input_ids"], b["attention_mask"]).loss
    torch.manual_seed(7)                                                               # replay the step's draws
    drop = torch.rand(8) < 0.5                                                         # caption -> ""
    t = torch.randint(0, T, (8,))
    eps = torch.randn(x.shape)
    assert drop.any() and (~drop).any()
    ab = _abar(m)[t]
    x_t = _b(ab.sqrt(), x) * x + _b((1 - ab).sqrt(), x) * eps
    pred = []
    for i in range(8):   # each row with its own caption's states, unpadded: "" for the dropped ones
        ctx, mask = _states(m, [""] if drop[i] else [captions[i]])
        pred.append(m.unet(x_t[i:i + 1], t[i:i + 1], ctx, mask))
    torch.testing.assert_close(loss, F.mse_loss(torch.cat(pred), eps), atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for p in m.conditioner.parameters())               # the tower is frozen
    assert "text_encoder" not in m.parts() and set(m.parts()) == {"unet"}


def test_sampling_guides_away_from_the_empty_caption(tok):
    m = _model(tok).eval()
    s, steps = 3.0, 2
    images = m.generate(PROMPTS, steps=steps, sampler="ddim", guidance_scale=s,
                        generator=torch.Generator().manual_seed(2))
    ab = _abar(m).float()
    x = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    ts = [(T // steps) * i for i in reversed(range(steps))]                            # "leading": 20, 0
    cond, null = [_states(m, [p]) for p in PROMPTS], _states(m, [""])
    with torch.no_grad():
        for i, t in enumerate(ts):
            tt = torch.full((1,), t)
            e = []
            for r in range(2):
                e_c, e_u = m.unet(x[r:r + 1], tt, *cond[r]), m.unet(x[r:r + 1], tt, *null)
                e.append(e_u + s * (e_c - e_u))                                        # uncond = tau("")
            e = torch.cat(e)
            a_prev = ab[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0)
            x0 = (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e                           # DDIM, eta = 0
    torch.testing.assert_close(images, x.clamp(-1, 1), atol=1e-5, rtol=1e-4)


def test_the_prompt_steers_the_sample_and_guidance_zero_ignores_it(tok):
    m = _model(tok).eval()
    run = lambda prompt, s: m.generate([prompt], steps=3, guidance_scale=s, generator=torch.Generator().manual_seed(5))
    for s in (1.0, 3.0):
        assert (run("A red circle.", s) - run("A blue cross.", s)).abs().max() > 1e-3
    torch.testing.assert_close(run("A red circle.", 0.0), run("A blue cross.", 0.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run("A red circle.", 0.0), run("", 1.0), atol=1e-5, rtol=1e-5)   # = the "" model


def test_save_load_round_trip_keeps_the_tokenizer_and_the_samples(tok, tmp_path, capsys):
    import ocellus
    m = _model(tok).eval()
    out = save_generator(m, tmp_path / "gen")
    back = load_generator(out)
    assert isinstance(back, TextDiffusionModel) and back.spec["text_encoder"]["hidden_size"] == 16
    torch.testing.assert_close(dict(back.state_dict()), dict(m.state_dict()), rtol=0, atol=0)
    g = lambda model: model.generate(PROMPTS, steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(g(back), g(m), rtol=0, atol=0)
    assert type(ocellus.load(out)) is TextDiffusionModel                               # the registry's one load
    png = tmp_path / "grid.png"
    assert main(["generate-image", "--model", str(out), "--prompt", "A red circle.|A blue star.", "--n", "2",
                 "--steps", "2", "--guidance-scale", "2", "--out", str(png)]) == 0
    from PIL import Image
    assert Image.open(png).size == (((8 + 1) * 2 + 1) * 4, ((8 + 1) * 2 + 1) * 4)      # 2 rows x 2 samples
    assert main(["generate-image", "--model", str(out), "--prompt", "A red circle.|", "--out", str(png)]) != 0
    assert "empty caption" in capsys.readouterr().err


def test_bad_text_configs_are_clear_errors(tok):
    tower = _tower(tok)
    spec = {"kind": "diffusion", "text_encoder": tower.config.to_hf(), "unet": {"context_dim": 32, "groups": 4,
                                                                                 "channels": 8}}
    with pytest.raises(ConfigError, match="context_dim 32 must equal the text encoder's hidden_size 16"):
        build(spec)
    m = _model(tok)
    m.conditioner.tokenizer = None
    with pytest.raises(ConfigError, match="no tokenizer"):
        m.generate(PROMPTS, steps=1)
    m.conditioner.tokenizer = tok
    with pytest.raises(InputError, match="list of strings"):
        m.generate("A red circle.", steps=1)


def test_dominant_colour_reads_the_shape_colour_of_real_images():
    x, _, _ = image_data("shapes", "test", 16, 80, seed=0)
    asked = [sc.objects[0].colour for sc in shape_scenes("test", 16, 80, seed=0)]
    got = dominant_colour(x, COLOURS)
    assert sum(g == a for g, a in zip(got, asked)) / len(asked) >= 0.95
    assert dominant_colour(torch.ones(1, 3, 16, 16), COLOURS) == [None]                # white: no foreground
    assert shape_prompts()[:2] == ["A red circle.", "A red square."] and len(shape_prompts()) == 8 * len(SHAPES)


class _Painter:
    """A 'generator' that draws exactly what its caption asks ("A red circle." -> a red circle)."""
    spec = {"kind": "diffusion"}

    def eval(self):
        return self

    def generate(self, prompts, **kw):
        objs = [prompt[2:-1].split() for prompt in prompts]                              # "A red circle." -> red circle
        imgs = [render(Scene(16, "white", (Obj(shape, colour, (3, 3, 13, 13)),))) for colour, shape in objs]
        return torch.stack([torch.tensor(np.asarray(i), dtype=torch.float32).permute(2, 0, 1)
                            for i in imgs]) / 127.5 - 1


def test_measure_text_scores_a_generator_that_draws_the_caption_as_right():
    x, y, _ = image_data("shapes", "train", 16, 600, seed=0)
    res = measure_text(_Painter(), 16, {"guidance_scale": 3.0}, n_per_prompt=2, judge=train_judge(x, y, steps=150))
    assert res["n"] == 80 and res["colour_accuracy"] == 1.0 and res["no_foreground"] == 0.0
    assert res["shape_accuracy"] >= 0.6 and res["colour_accuracy_real"] >= 0.95 and res["guidance_scale"] == 3.0


def test_recipe_trains_on_captions_with_the_clip_exports_text_tower(tok, tmp_path):
    import ocellus
    clip = build_dual_encoder("clip", {"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                                       "num_hidden_layers": 1, "num_attention_heads": 2},
                              {"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32,
                               "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
                               "eos_token_id": tok.eos_token_id}, projection_dim=8)
    ocellus.save(clip, tmp_path / "clip", tokenizer=tok)
    out = tmp_path / "run"
    export = run_generative_recipe(RECIPE, [f"model.text_encoder_from={tmp_path / 'clip'}",
                                            "model.autoencoder_from=null",
                                            "model.unet.in_channels=3", "model.unet.channels=8", "data.n=32",
                                            "train.batch_size=8", "train.max_steps=3", "train.log_every=1",
                                            "train.warmup_steps=0", "train.sample_every=0", "eval.measure=false",
                                            "eval.generate.steps=2", f"train.out_dir={out}"])
    m = load_generator(export)
    assert isinstance(m, TextDiffusionModel) and "class_names" not in m.spec
    torch.testing.assert_close(dict(m.conditioner.text_model.state_dict()), dict(clip.text_model.state_dict()))
    assert m.conditioner.tokenizer.encode("A red circle.") == tok.encode("A red circle.")
    assert (out / "samples" / "final.png").exists()
