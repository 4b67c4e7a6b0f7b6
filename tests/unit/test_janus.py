"""Janus: two visual paths into one decoder, the interleaved CFG prompts, the three training stages."""
import pytest
import torch

from ocellus.errors import InputError
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.unified import BOS, EOS, PAD, WordVocab
from ocellus.models.unified.janus import build_janus
from ocellus.train.stages import apply_stage

WORDS = ["red", "blue", "circle", "square"]


def tiny(image_size=16, vit_patch=4, seed=0):
    torch.manual_seed(seed)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    return build_janus({"dim": 32, "num_layers": 2, "num_heads": 2, "vit_dim": 32, "vit_layers": 1,
                        "vit_patch": vit_patch, "gen_embed_dim": 8}, tok, WordVocab(WORDS), image_size)


def test_unconditional_prompt_keeps_padding_bos_and_boi():
    m = tiny()
    ids, mask = m.cfg_prompts(["red circle", "blue"])
    cond0, unc0, cond1, unc1 = ids
    w = m.text.encode
    assert cond0.tolist() == [BOS] + w("red circle") + [m.boi]
    assert unc0.tolist() == [BOS, PAD, PAD, m.boi]                      # caption blanked, same length
    assert cond1.tolist() == [PAD, BOS] + w("blue") + [m.boi]           # left padded
    assert unc1.tolist() == [PAD, BOS, PAD, m.boi]
    # the partner row has exactly the conditional row's mask: the left pad stays masked, the blanked
    # caption stays attended (it is the learned "no caption" the model saw in training)
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[2], mask[3])
    assert mask[2].tolist() == [0, 1, 1, 1]


def test_training_uncond_rows_match_the_inference_partner():
    m = tiny()
    codes = torch.zeros(4, 4, dtype=torch.long)
    ids, _ = m.sequence("red circle", codes, "t2i", uncond=True)
    cond, mask = m.cfg_prompts(["red circle"])
    assert ids[:4] == cond[1].tolist()


@pytest.mark.parametrize("image_size,patch", [(16, 4), (16, 8)])
def test_embed_routes_each_slot_to_its_path(image_size, patch):
    m = tiny(image_size, patch)
    codes = torch.randint(0, 16, (4, 4))
    t2i, _ = m.sequence("red circle", codes, "t2i")
    i2t, _ = m.sequence("blue square", codes, "i2t")
    assert i2t.count(m.image_token) == (image_size // patch) ** 2
    T = max(len(t2i), len(i2t))
    ids = torch.tensor([t2i + [PAD] * (T - len(t2i)), i2t + [PAD] * (T - len(i2t))])
    px = torch.rand(2, 3, image_size, image_size) * 2 - 1
    base = m.embed(ids, px)
    other_px = px.clone()
    other_px[1] = -other_px[1]
    moved = (m.embed(ids, other_px) - base).abs().sum(-1) > 0            # [2, T]
    assert torch.equal(moved[1], ids[1] == m.image_token) and not moved[0].any()
    with torch.no_grad():
        m.gen_embed.weight.add_(1.0)
    moved = (m.embed(ids, px) - base).abs().sum(-1) > 0
    assert torch.equal(moved, ids >= m.gen_base)
    with pytest.raises(InputError, match="pixel_values"):
        m.embed(ids, None)


def test_code_loss_goes_through_gen_head_and_text_loss_through_lm_head():
    m = tiny()
    codes = torch.randint(0, 16, (4, 4))
    for task, head, other in (("t2i", m.gen_head, m.decoder.lm_head), ("i2t", m.decoder.lm_head, m.gen_head)):
        ids, labels = m.sequence("red circle", codes, task)
        m.zero_grad()
        m(torch.tensor([ids]), labels=torch.tensor([labels]), pixel_values=torch.rand(1, 3, 16, 16)).loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in other.parameters())


def test_three_stages_freeze_the_right_parts():
    m = tiny()
    stages = [{"und_adaptor": "full", "gen_adaptor": "full"},
              {"und_adaptor": "full", "gen_adaptor": "full", "llm": "full"},
              {"vision": "full", "und_adaptor": "full", "gen_adaptor": "full", "llm": "full"}]
    codes = torch.randint(0, 16, (4, 4))
    ids, labels = m.sequence("red circle", codes, "i2t")
    for stage in stages:
        apply_stage(m, stage)
        m.zero_grad()
        m(torch.tensor([ids]), labels=torch.tensor([labels]), pixel_values=torch.rand(1, 3, 16, 16)).loss.backward()
        for name, part in m.parts().items():
            trained = any(p.grad is not None for p in part.parameters())
            # an understanding batch never reaches gen_adaptor, trainable or not
            assert trained == (name in stage and name != "gen_adaptor"), name


def test_generation_and_captioning_shapes():
    m = tiny().eval()
    imgs = m.generate_images(["red circle", "blue"], guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 16, 16)
    out = m.describe(torch.rand(2, 3, 16, 16) * 2 - 1, max_new_tokens=3)
    assert all(set(s.split()) <= set(WORDS) for s in out)


def test_guidance_zero_ignores_the_caption():
    m = tiny(seed=1).eval()
    with torch.no_grad():   # an untrained model at init std 0.02 barely reads its prompt: make it sensitive
        for p in m.decoder.parameters():
            p.normal_(0, 0.5) if p.dim() > 1 else None
    a = m.generate_images(["red circle"], guidance_scale=0.0, temperature=0)
    b = m.generate_images(["blue square"], guidance_scale=0.0, temperature=0)
    c = m.generate_images(["blue square"], guidance_scale=1.0, temperature=0)
    assert torch.equal(a, b) and not torch.equal(b, c)


@pytest.mark.slow
def test_recipe_three_stages_smoke(tmp_path):
    from _unified_tiny import tiny_recipe
    from ocellus.train.unified import run_unified
    stages = [{"name": "s1", "max_steps": 10, "parts": {"und_adaptor": "full", "gen_adaptor": "full"}},
              {"name": "s2", "max_steps": 20, "parts": {"vision": "full", "und_adaptor": "full", "gen_adaptor": "full",
                                                        "llm": "full"}},
              {"name": "s3", "max_steps": 10, "lr": 1e-3, "parts": {"vision": "full", "und_adaptor": "full",
                                                                    "gen_adaptor": "full", "llm": "full"}}]
    res = run_unified(tiny_recipe(tmp_path, {"family": "janus", "vit_dim": 32, "vit_layers": 1}, stages=stages))
    assert res["steps"] == 40 and res["last_loss"] < res["first_loss"]
    assert all((tmp_path / "run" / s).is_dir() for s in ("s1", "s2", "s3"))
