"""Show-o: the omni-attention mask against hand-written examples, QK-norm, the two losses, MaskGIT decoding."""
import pytest
import torch

from ocellus.errors import InputError
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.unified import BOS, PAD, WordVocab
from ocellus.models.unified.showo import build_showo, omni_attention_mask

WORDS = ["red", "blue", "circle", "square"]


def tiny(seed=0, dim=32):
    torch.manual_seed(seed)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    return build_showo({"dim": dim, "num_layers": 2, "num_heads": 2}, tok, WordVocab(WORDS), 16)


def test_omni_mask_worked_example_text_image_text_pad():
    #            t0 t1 i2 i3 t4 pad5
    is_image = torch.tensor([[0, 0, 1, 1, 0, 0]]).bool()
    keep = torch.tensor([[1, 1, 1, 1, 1, 0]]).bool()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],      # text: causal
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],      # image tokens: earlier text + their whole image (i2 sees i3)
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],      # text after the image sees it
        [1, 1, 1, 1, 1, 1],      # the pad row: causal, pad column removed, but itself always visible
    ]).bool()
    assert torch.equal(omni_attention_mask(is_image, keep)[0, 0], expected)


def test_omni_mask_two_images_and_removed_pad_columns():
    #                    t0 i1 i2 t3 i4 i5
    is_image = torch.tensor([[0, 1, 1, 0, 1, 1]]).bool()
    keep = torch.tensor([[1, 1, 1, 0, 1, 1]]).bool()     # t3 is a pad: nobody attends it
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],      # first image: full within itself, not the later image
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],      # the pad query sees itself
        [1, 1, 1, 0, 1, 1],      # second image: earlier tokens (pad removed) + itself
        [1, 1, 1, 0, 1, 1],
    ]).bool()
    assert torch.equal(omni_attention_mask(is_image, keep)[0, 0], expected)


def test_image_tokens_see_later_image_tokens_but_text_does_not_see_the_future():
    m = tiny().eval()
    codes = torch.randint(0, 16, (4, 4))
    ids, _ = m.sequence("red circle", codes, "i2t")
    ids = torch.tensor([ids])
    base = m.logits(ids)
    changed = ids.clone()
    # <bos> <boi> c0..c15: c15 sits at index 17
    changed[0, 17] = m.vocab.code_base + (int(ids[0, 17]) - m.vocab.code_base + 1) % 16
    diff = (m.logits(changed) - base).abs().amax(-1)[0]   # [T]
    assert (diff[2:17] > 0).all()                        # earlier image tokens see c15 (full attention in the image)
    assert (diff[:2] == 0).all()                         # text before the image does not


def test_qk_norm_normalises_queries_and_keys():
    m = tiny()
    attn = m.layers[0].self_attn
    x = torch.randn(1, 3, attn.num_heads * attn.head_dim) * 50
    q = attn.q_norm(attn.q_proj(x).view(1, 3, attn.num_heads, attn.head_dim))
    assert torch.allclose(q.pow(2).mean(-1), torch.ones(1, 3, attn.num_heads), atol=1e-3)


def test_t2i_loss_is_mask_prediction_on_codes_and_i2t_next_token_on_text():
    m = tiny()
    codes = torch.randint(0, 16, (4, 4))
    t2i, t2i_labels = m.sequence("red circle", codes, "t2i")
    assert [l for l in t2i_labels if l != -100] == (codes.flatten() + m.vocab.code_base).tolist()
    i2t, i2t_labels = m.sequence("red circle", codes, "i2t")
    assert [l for l in i2t_labels if l != -100] == m.text.encode("red circle") + [2]
    out = m(torch.tensor([t2i]), labels=torch.tensor([t2i_labels]), generator=torch.Generator().manual_seed(0))
    assert out.loss > 0 and torch.isfinite(out.loss)
    m.mtp_weight = 0.0
    assert m(torch.tensor([t2i]), labels=torch.tensor([t2i_labels])).loss == 0     # t2i has no text target
    m.mtp_weight, m.ntp_weight = 1.0, 0.0
    assert m(torch.tensor([i2t]), labels=torch.tensor([i2t_labels])).loss == 0     # i2t has no image target


def test_uncond_prompt_columns_are_removed():
    m = tiny().eval()
    ids, slots = m.prompts(["red circle", "blue"])
    assert ids.shape[0] == 4 and slots.sum(1).tolist() == [16] * 4
    assert ids[2].tolist()[:3] == [BOS, PAD, PAD] and ids[3].tolist()[:3] == [PAD, BOS, PAD]
    # an unconditional row gives the same logits whatever its (removed) caption length
    a = m.logits(ids[2:3])[0, -5:]
    b = m.logits(ids[3:4])[0, -5:]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_maskgit_decoding_fills_every_slot(steps):
    m = tiny().eval()
    codes = m.generate_image_ids(["red circle", "blue square"], steps=steps, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 16) and codes.min() >= 0 and codes.max() < 16
    with pytest.raises(InputError, match="steps"):
        m.generate_image_ids(["red"], steps=17)


def test_mixed_modality_text_image_text():
    m = tiny().eval()
    image, said = m.mixed("red circle", steps=4, generator=torch.Generator().manual_seed(0))
    assert image.shape == (1, 3, 16, 16) and set(said.split()) <= set(WORDS)


@pytest.mark.slow
def test_recipe_smoke_loss_falls(tmp_path):
    from _unified_tiny import tiny_recipe
    from ocellus.train.unified import run_unified
    res = run_unified(tiny_recipe(tmp_path, {"family": "showo"}, steps=60))
    assert res["last_loss"] < res["first_loss"] and res["family"] == "Showo"


def test_building_showo_leaves_the_tokenizer_weights_alone():
    """Regression: initialising the transformer must not re-draw the trained VQ codebook."""
    torch.manual_seed(0)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=(1, 2), embed_dim=4, num_codes=16, groups=4))
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    build_showo({"dim": 32, "num_layers": 1, "num_heads": 2}, tok, WordVocab(WORDS), 16)
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
