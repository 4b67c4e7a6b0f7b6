"""Emu3: the in-sequence image layout, the vision-weighted loss, CFG and constrained decoding."""
import pytest
import torch
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.models.generative.vq import VQConfig, VQVAE
from ocellus.models.text.decoder import DecoderLM
from ocellus.models.unified import BOS, EOS, UnifiedVocab, WordVocab, pick
from ocellus.models.unified.emu3 import Emu3, decoder_config, weighted_next_token_loss

WORDS = ["red", "blue", "circle", "square"]


def tiny(num_codes=16, channel_mults=(1, 2), seed=0):
    torch.manual_seed(seed)
    text = WordVocab(WORDS)
    vocab = UnifiedVocab(len(text), num_codes, max_grid=8)
    tok = VQVAE(VQConfig(in_channels=3, channels=8, channel_mults=channel_mults, embed_dim=4, num_codes=num_codes,
                         groups=4))
    return Emu3(DecoderLM(decoder_config(vocab.size, 128, dim=32, num_layers=2, num_heads=2)), tok, vocab, text)


def test_image_layout_has_markers_size_header_and_row_ends():
    m = tiny()
    codes = torch.tensor([[0, 1, 2], [3, 4, 5]])                       # h=2, w=3
    ids, v = m.image_ids(codes), m.vocab
    assert ids[:3] == [v.boi, v.size_token(2), v.size_token(3)]
    assert ids[3:] == [v.code_base + 0, v.code_base + 1, v.code_base + 2, v.eol,
                       v.code_base + 3, v.code_base + 4, v.code_base + 5, v.eol, v.eoi]
    assert torch.equal(m.parse_body(ids[3:], 2, 3), codes)
    bad = list(ids[3:])
    bad[3] = v.code_base                                               # a code where <eol> belongs
    with pytest.raises(InputError, match="row 0, column 3"):
        m.parse_body(bad, 2, 3)


def test_sequences_put_image_and_caption_in_task_order():
    m = tiny()
    codes = torch.zeros(2, 2, dtype=torch.long)
    t2i, labels = m.sequence("red circle", codes, "t2i")
    i2t, _ = m.sequence("red circle", codes, "i2t")
    words = m.text.encode("red circle")
    assert t2i[:3] == [BOS] + words and t2i[-2:] == [m.vocab.eoi, EOS]
    assert i2t[1] == m.vocab.boi and i2t[-3:] == words + [EOS]
    assert labels[0] == -100 and labels[1:] == t2i[1:]
    with pytest.raises(InputError, match="not in the vocabulary"):
        m.sequence("green circle", codes, "t2i")


def test_vision_weight_scales_vision_targets_only():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 6, 10), torch.randint(0, 10, (2, 6))
    labels[1, 4] = -100
    vision = torch.zeros(2, 6, dtype=torch.bool)
    vision[:, 3:] = True
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                         reduction="none").view(2, 5)
    w = torch.where(vision[:, 1:], 0.5, 1.0) * (labels[:, 1:] != -100)
    assert torch.allclose(weighted_next_token_loss(logits, labels, vision, 0.5), (ce * w).sum() / w.sum())
    # weight 0: the loss ignores what the vision targets are
    other = labels.clone()
    other[vision] = (other[vision] + 1) % 10
    other[1, 4] = -100
    assert torch.allclose(weighted_next_token_loss(logits, labels, vision, 0.0),
                          weighted_next_token_loss(logits, other, vision, 0.0))
    assert not torch.allclose(weighted_next_token_loss(logits, labels, vision, 1.0),
                              weighted_next_token_loss(logits, other, vision, 1.0))


def test_model_loss_weights_image_tokens():
    m = tiny()
    ids, labels = m.sequence("blue square", torch.randint(0, 16, (2, 2)), "t2i")
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    full = m(ids, labels=labels).loss
    m.vision_weight = 1.0
    plain = m.decoder(input_ids=ids, labels=labels).loss                # unweighted next-token loss
    assert torch.allclose(m(ids, labels=labels).loss, plain, atol=1e-6)
    assert not torch.allclose(full, plain)


@pytest.mark.parametrize("h,w,scale", [(2, 2, 3.0), (3, 2, 1.0)])
def test_constrained_decoding_makes_every_image_well_formed(h, w, scale):
    m = tiny(seed=1).eval()
    g = torch.Generator().manual_seed(0)
    body = m.generate_image_ids(["red circle", "blue square", "red"], h, w, guidance_scale=scale, generator=g)
    assert body.shape == (3, h * (w + 1) + 1)
    for b in body.tolist():
        assert m.parse_body(b, h, w).shape == (h, w)                    # raises when malformed
    # the same untrained model unconstrained: the layout falls apart
    free = m.generate_image_ids(["red circle", "blue square", "red"], h, w, guidance_scale=scale,
                                constrained=False, generator=torch.Generator().manual_seed(0))
    broken = 0
    for b in free.tolist():
        try:
            m.parse_body(b, h, w)
        except InputError:
            broken += 1
    assert broken > 0


def test_images_decode_through_the_tokenizer():
    m = tiny().eval()
    imgs = m.generate_images(["red circle"], 4, 4, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (1, 3, 16, 16) and imgs.abs().max() <= 1


def test_guidance_mixes_cond_and_uncond_logits():
    cond, uncond = torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    # s=1: the conditional argmax (1); s=0: the unconditional (2); s=3 pushes away from uncond
    assert pick(cond, uncond, 1.0, temperature=0).item() == 1
    assert pick(cond, uncond, 0.0, temperature=0).item() == 2
    assert pick(cond, uncond, 3.0, temperature=0).item() == 1
    allowed = torch.tensor([True, False, True])
    assert pick(cond, uncond, 1.0, allowed=allowed, temperature=0).item() == 2


def test_cfg_generation_uses_the_unconditional_rows():
    m = tiny(seed=2).eval()
    a = m.generate_image_ids(["red circle"], 2, 2, guidance_scale=1.0, temperature=0)
    b = m.generate_image_ids(["red circle"], 2, 2, guidance_scale=8.0, temperature=0)
    c = m.generate_image_ids(["red circle"], 2, 2, guidance_scale=0.0, temperature=0)
    assert not torch.equal(a, b) or not torch.equal(a, c)
    # scale 0 is the unconditional model: the same image for any caption
    assert torch.equal(c, m.generate_image_ids(["blue square"], 2, 2, guidance_scale=0.0, temperature=0))


def test_describe_returns_words_only():
    m = tiny().eval()
    out = m.describe(torch.rand(2, 3, 16, 16) * 2 - 1, max_new_tokens=3)
    assert len(out) == 2 and all(set(s.split()) <= set(WORDS) for s in out)


def test_cached_left_padded_decoding_matches_full_forward():
    """Prompts of different lengths (cond vs uncond) share one left-padded batch: every cached step must
    equal a full forward over the unpadded row."""
    m = tiny(seed=3).eval()
    rows = [[BOS] + m.text.encode("red circle") + m.header(2, 2), [BOS] + m.header(2, 2)]
    out = m._decode(rows, 5, lambda s, logits: logits.argmax(-1))
    for r, row in enumerate(rows):
        ids = torch.tensor([row])
        for s in range(5):
            nxt = m.decoder(input_ids=ids).logits[0, -1].argmax()
            assert nxt == out[r, s]
            ids = torch.cat([ids, nxt.view(1, 1)], 1)


@pytest.mark.slow
def test_recipe_smoke_loss_falls(tmp_path):
    from _unified_tiny import tiny_recipe
    from ocellus.train.unified import run_unified
    res = run_unified(tiny_recipe(tmp_path, {"family": "emu3", "vision_weight": 0.5}))
    assert res["last_loss"] < res["first_loss"] and res["family"] == "Emu3"
    assert (tmp_path / "run" / "quality.json").exists()


def test_recipe_rejects_bad_keys(tmp_path):
    from _unified_tiny import tiny_recipe
    from ocellus.errors import ConfigError
    from ocellus.train.unified import run_unified
    with pytest.raises(ConfigError, match="unknown model keys"):
        run_unified(tiny_recipe(tmp_path, {"family": "emu3", "vision_wieght": 0.5}))
    with pytest.raises(ConfigError, match="model.tasks"):
        run_unified(tiny_recipe(tmp_path, {"family": "emu3"}, tasks=("draw",)))


@pytest.mark.slow
def test_export_reloads_and_chats(tmp_path):
    """The exported directory reopens with equal outputs; the chat session describes and draws."""
    from PIL import Image
    from _unified_tiny import tiny_recipe
    from ocellus.chat import UnifiedChat
    from ocellus.models.unified.checkpoint import load_unified
    from ocellus.train.unified import run_unified
    res = run_unified(tiny_recipe(tmp_path, {"family": "emu3"}, steps=5))
    back = load_unified(res["export"])
    px = torch.rand(2, 3, 16, 16) * 2 - 1
    assert back.describe(px) == res["model"].eval().describe(px)
    chat = UnifiedChat(back, tmp_path / "chat")
    reply = "".join(chat.send("draw a red circle"))
    assert "red circle" in reply and (tmp_path / "chat" / "drawn_1.png").exists()
    said = "".join(chat.send("what is this?", [Image.open(tmp_path / "chat" / "drawn_1.png")]))
    assert set(said.split()) <= {"red", "blue", "circle", "square", "triangle", "star", "cross"}
    with pytest.raises(InputError, match="draw"):
        "".join(chat.send("hello"))


def test_build_model_gives_the_decoder_the_spec_sizes():
    """models/unified/checkpoint.build_model (what a saved unified model is rebuilt by): the spec's dim,
    num_layers and num_heads reach the decoder as named, not swapped."""
    from _unified_tiny import VQ_SPEC
    from ocellus.models.generative.checkpoint import build
    from ocellus.models.unified.checkpoint import build_model, text_vocab
    model = build_model({"family": "emu3", "dim": 32, "num_layers": 1, "num_heads": 4}, build(dict(VQ_SPEC)),
                        text_vocab(["red"]), 16)
    c = model.decoder.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (32, 1, 4)
