"""SEED-LLaMA: [IMG] c1..cQ [/IMG] in the token stream, plain next-token loss, constrained + guided decoding,
the unified recipe (train, measure, export, chat) around a tiny random SEED codec."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ocellus.errors import CheckpointError, ConfigError, InputError
from ocellus.models.connectors.qformer import QFormer, QFormerConfig
from ocellus.models.unified import BOS, EOS, WordVocab
from ocellus.models.unified.seed import SeedTokenizer
from ocellus.models.unified.seed_llama import SeedLlama, build_seed_llama
from ocellus.models.vision.vit import ViTConfig, VisionTransformer

WORDS = ["red", "blue", "circle", "square"]


class TinyCodec(nn.Module):
    """The SEED codec's interface (encode, decode, num_codes, num_queries) around a tiny random SeedTokenizer;
    decode maps the reconstructed embedding to pixels with one linear layer (a stand-in for the diffusion
    detokenizer: these tests are about the LLM side)."""

    def __init__(self, q: int = 4, num_codes: int = 16, size: int = 16):
        super().__init__()
        vit = VisionTransformer(ViTConfig.clip(image_size=size, patch_size=4, hidden_size=32, intermediate_size=64,
                                               num_layers=1, num_heads=2))
        qf = QFormer(QFormerConfig(num_query_tokens=q, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1))
        self.seed = SeedTokenizer(vit, qf, num_codes=num_codes, code_dim=8, embed_dim=12)
        self.to_pixels = nn.Linear(12, 3 * size * size)
        self.num_codes, self.num_queries, self.size = num_codes, q, size
        self.spec = {"kind": "seed", "q": q, "num_codes": num_codes, "image_size": size}
        self.decoded_with = None

    def encode(self, pixel_values):
        return self.seed.encode(pixel_values)

    def decode(self, codes, guidance_scale=1.0, steps=10, seed=0):
        self.decoded_with = {"guidance_scale": guidance_scale, "steps": steps, "seed": seed}
        return torch.tanh(self.to_pixels(self.seed.decode_embedding(codes))).view(-1, 3, self.size, self.size)


def tiny(q=4, num_codes=16, seed=0, dim=32) -> SeedLlama:
    torch.manual_seed(seed)
    return build_seed_llama({"dim": dim, "num_layers": 2, "num_heads": 2}, TinyCodec(q, num_codes), WordVocab(WORDS))


def test_image_is_img_codes_end_img_and_every_token_after_bos_is_a_target():
    m = tiny(q=3)
    v, codes = m.vocab, torch.tensor([5, 0, 15])
    img = [v.boi, v.code_base + 5, v.code_base + 0, v.code_base + 15, v.eoi]
    assert m.image_ids(codes) == img
    red_circle = m.text.encode("red circle")
    t2i, t2i_labels = m.sequence("red circle", codes, "t2i")
    i2t, i2t_labels = m.sequence("red circle", codes, "i2t")
    assert t2i == [BOS] + red_circle + img + [EOS] and i2t == [BOS] + img + red_circle + [EOS]
    assert t2i_labels == [-100] + t2i[1:] and i2t_labels == [-100] + i2t[1:]
    assert m.sequence("red circle", codes, "t2i", uncond=True)[0] == [BOS] + img + [EOS]
    other = torch.tensor([1, 2, 3])
    ids, labels = m.interleaved([("red circle", codes), ("blue square", other)])
    assert ids == [BOS] + red_circle + img + m.text.encode("blue square") + m.image_ids(other) + [EOS]
    assert labels == [-100] + ids[1:]
    assert torch.equal(m.parse_body(img[1:]), codes)


def test_loss_is_mean_next_token_cross_entropy_over_the_labelled_positions():
    m = tiny()
    a, _ = m.sequence("red circle", torch.tensor([1, 2, 3, 4]), "t2i")
    b, _ = m.sequence("blue square", torch.tensor([4, 3, 2, 1]), "i2t", uncond=True)
    b = b[:-2]                                                                        # a shorter row: padded
    ids = torch.tensor([a, b + [0] * (len(a) - len(b))])
    labels = torch.tensor([[-100] + a[1:], [-100] + b[1:] + [-100] * (len(a) - len(b))])
    mask = (labels != -100) | (torch.arange(len(a)) == 0)
    out = m(ids, attention_mask=mask.long(), labels=labels)
    logits = m(ids, attention_mask=mask.long()).logits
    # by hand: position t predicts token t+1; row 0 has len(a)-1 targets, row 1 len(b)-1
    terms = [F.cross_entropy(logits[r, t], ids[r, t + 1], reduction="sum")
             for r, row in enumerate([a, b]) for t in range(len(row) - 1)]
    assert len(terms) == len(a) + len(b) - 2
    assert torch.allclose(out.loss, torch.stack(terms).mean(), atol=1e-6)


@pytest.mark.parametrize("q,scale", [(3, 3.0), (6, 1.0)])
def test_constrained_decoding_yields_exactly_q_codes_then_end_img_even_untrained(q, scale):
    m = tiny(q=q, seed=1).eval()
    body = m.generate_codes(["red circle", "blue square", "red"], guidance_scale=scale,
                            generator=torch.Generator().manual_seed(0))
    assert body.shape == (3, q + 1)
    assert (body[:, -1] == m.vocab.eoi).all()
    codes = body[:, :q] - m.vocab.code_base
    assert (codes >= 0).all() and (codes < m.vocab.num_codes).all()
    # the same untrained model without the constraint does not keep the layout
    free = m.generate_codes(["red circle", "blue square", "red"], guidance_scale=scale, constrained=False,
                            generator=torch.Generator().manual_seed(0))
    broken = 0
    for b in free.tolist():
        try:
            m.parse_body(b)
        except InputError:
            broken += 1
    assert broken > 0


def test_cached_guided_decoding_equals_full_recomputation():
    """Greedy CFG through the KV cache with left-padded cond/uncond rows == full forwards over unpadded rows."""
    m, s = tiny(q=3, seed=2).eval(), 2.5
    got = m.generate_codes(["red circle", "blue"], guidance_scale=s, temperature=0)
    allowed = [m.allowed_at(j) for j in range(4)]
    with torch.no_grad():
        for r, cap in enumerate(["red circle", "blue"]):
            cond, uncond = [BOS] + m.text.encode(cap) + [m.vocab.boi], [BOS, m.vocab.boi]
            for j in range(4):
                lc = m.decoder(input_ids=torch.tensor([cond])).logits[0, -1]
                lu = m.decoder(input_ids=torch.tensor([uncond])).logits[0, -1]
                nxt = (lu + s * (lc - lu)).masked_fill(~allowed[j], float("-inf")).argmax()
                assert nxt == got[r, j], (r, j)
                cond, uncond = cond + [int(nxt)], uncond + [int(nxt)]


def test_unconditional_prompt_is_bos_img_or_the_negative_caption():
    """Guidance 0 is the unconditional model alone: the same codes for every caption, equal to greedy
    decoding after '<bos> [IMG]' (or after '<bos> negative [IMG]')."""
    m = tiny(q=4, seed=3).eval()

    def greedy_after(prompt):
        ids = list(prompt)
        with torch.no_grad():
            for j in range(5):
                logits = m.decoder(input_ids=torch.tensor([ids])).logits[0, -1]
                ids.append(int(logits.masked_fill(~m.allowed_at(j), float("-inf")).argmax()))
        return ids[len(prompt):]
    u = m.generate_codes(["red circle", "blue square"], guidance_scale=0.0, temperature=0)
    assert u[0].tolist() == u[1].tolist() == greedy_after([BOS, m.vocab.boi])
    n = m.generate_codes(["red circle"], guidance_scale=0.0, negative="blue square", temperature=0)
    assert n[0].tolist() == greedy_after([BOS] + m.text.encode("blue square") + [m.vocab.boi])
    assert m.generate_codes(["red circle"], guidance_scale=1.0, temperature=0)[0].tolist() == \
        greedy_after([BOS] + m.text.encode("red circle") + [m.vocab.boi])


def test_images_go_through_the_codec_decoder_with_its_options():
    m = tiny().eval()
    imgs = m.generate_images(["red circle", "blue square"], detok_guidance=2.0, detok_steps=7,
                             generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 16, 16) and imgs.abs().max() <= 1
    assert m.tokenizer.decoded_with["guidance_scale"] == 2.0 and m.tokenizer.decoded_with["steps"] == 7
    said = m.describe(torch.rand(3, 3, 16, 16) * 2 - 1, max_new_tokens=3)
    assert len(said) == 3 and all(set(s.split()) <= set(WORDS) for s in said)


def test_typed_errors():
    m = tiny(q=4)
    with pytest.raises(InputError, match=r"\[B, 4\]"):
        m.image_ids(torch.tensor([1, 2, 3]))                                       # wrong code count
    with pytest.raises(InputError, match="out of range"):
        m.image_ids(torch.tensor([1, 2, 3, 16]))                                    # id past the codebook
    with pytest.raises(InputError, match="1-D"):
        m.image_ids(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(InputError, match="task"):
        m.sequence("red circle", torch.tensor([1, 2, 3, 4]), "draw")
    with pytest.raises(InputError, match="not in the vocabulary"):
        m.sequence("green circle", torch.tensor([1, 2, 3, 4]), "t2i")
    body = m.image_ids(torch.tensor([1, 2, 3, 4]))[1:]
    with pytest.raises(InputError, match="position 4"):
        m.parse_body(body[:4] + [m.vocab.code_base])                               # a code where [/IMG] belongs
    with pytest.raises(InputError, match="position 1"):
        m.parse_body([body[0], m.vocab.eoi] + body[2:])
    with pytest.raises(ConfigError, match="unknown seed_llama model keys"):
        build_seed_llama({"dimm": 32}, TinyCodec(), WordVocab(WORDS))
    with pytest.raises(ConfigError, match="lacks 'encode'"):
        build_seed_llama({}, nn.Linear(1, 1), WordVocab(WORDS))


# -- the unified recipe ---------------------------------------------------------------------------------

@pytest.fixture
def seed_kind(monkeypatch):
    """checkpoint.build opens kind 'seed' specs as the tiny codec (the trained codec's builder is elsewhere)."""
    from ocellus.models.generative import checkpoint   # loads (models/unified/checkpoint.py too) call it from here
    build = checkpoint.build

    def patched(spec):
        if spec.get("kind") != "seed":
            return build(spec)
        codec = TinyCodec(spec["q"], spec["num_codes"], spec["image_size"])
        codec.spec = dict(spec)
        return codec
    monkeypatch.setattr(checkpoint, "build", patched)


def seed_recipe(tmp_path, steps=30, tasks=("t2i", "i2t", "interleave"), **model):
    from ocellus.models.generative.checkpoint import save_generator
    torch.manual_seed(0)
    codec = save_generator(TinyCodec(q=4), tmp_path / "codec")
    return {"task": "unified", "name": "tiny_seed", "seed": 0,
            "data": {"image_size": 16, "n": 32, "colours": ["red", "blue"]},
            "model": {"family": "seed_llama", "tokenizer_from": str(codec), "tasks": list(tasks), "dim": 32,
                      "num_layers": 1, "num_heads": 2, **model},
            "train": {"max_steps": steps, "batch_size": 16, "lr": 3e-3, "log_every": 10,
                      "out_dir": str(tmp_path / "run")},
            "eval": {"measure": False, "generate": {"guidance_scale": 2.0, "top_k": 4, "detok_steps": 3}}}


def test_recipe_trains_exports_reloads_exactly_and_chats(tmp_path, seed_kind):
    from PIL import Image
    from ocellus.chat import UnifiedChat
    from ocellus.models.unified.checkpoint import load_unified
    from ocellus.train.unified import run_unified
    res = run_unified(seed_recipe(tmp_path))
    assert res["family"] == "SeedLlama" and res["last_loss"] < 0.8 * res["first_loss"]
    model, back = res["model"].eval(), load_unified(res["export"])
    assert model.state_dict().keys() == back.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    px = torch.rand(3, 3, 16, 16) * 2 - 1
    assert back.describe(px) == model.describe(px)
    g = lambda: torch.Generator().manual_seed(1)
    assert torch.equal(back.generate_codes(["red circle"], generator=g()),
                       model.generate_codes(["red circle"], generator=g()))
    chat = UnifiedChat(back, tmp_path / "chat")
    reply = "".join(chat.send("draw red circle"))
    assert "red circle" in reply and (tmp_path / "chat" / "drawn_1.png").exists()
    assert back.tokenizer.decoded_with["steps"] == 3                                 # the recipe's generate options
    said = "".join(chat.send("what is this?", [Image.open(tmp_path / "chat" / "drawn_1.png")]))
    assert set(said.split()) <= {"red", "blue", "circle", "square", "triangle", "star", "cross"}


def test_recipe_rejects_bad_keys_and_the_wrong_tokenizer(tmp_path, seed_kind):
    from _unified_tiny import tiny_recipe
    from ocellus.train.unified import run_unified
    with pytest.raises(ConfigError, match="unknown seed_llama model keys"):
        run_unified(seed_recipe(tmp_path, steps=1, vision_weight=0.5))
    with pytest.raises(ConfigError, match="model.tasks"):
        run_unified(seed_recipe(tmp_path, steps=1, tasks=("draw",)))
    with pytest.raises(ConfigError, match="not one of \\('seed',\\)"):           # a VQ-VAE is not a SEED codec
        run_unified(tiny_recipe(tmp_path / "vq", {"family": "seed_llama"}, steps=1))
    with pytest.raises(ConfigError, match="interleave"):                          # Emu3 has no interleaved rows
        run_unified(tiny_recipe(tmp_path / "vq2", {"family": "emu3"}, steps=1, tasks=("t2i", "interleave")))
    with pytest.raises(CheckpointError):
        from ocellus.models.unified.checkpoint import load_unified
        load_unified(tmp_path)


def test_recipe_runs_on_the_real_seed_codec_format(tmp_path):
    """No stand-in: a tiny random codec of kind 'seed' (SEED tokenizer + diffusion detokenizer,
    models/unified/seed_detokenizer.py) saved as a generator directory; the recipe trains on its codes,
    the export reopens with the codec inside, and drawings come out of the diffusion detokenizer."""
    from ocellus.models.generative.checkpoint import build, save_generator
    from ocellus.models.unified.seed_detokenizer import tokenizer_spec
    from ocellus.models.unified.checkpoint import load_unified
    from ocellus.train.unified import run_unified
    torch.manual_seed(0)
    spec = {"kind": "seed", "image_size": 16, "tokenizer": tokenizer_spec(TinyCodec(q=3).seed),
            "detokenizer": {"unet": {"channels": 8, "channel_mults": [1, 2], "attention_levels": [1], "num_heads": 2,
                                     "context_dim": 16, "groups": 4}, "diffusion": {"num_train_timesteps": 20}}}
    recipe = seed_recipe(tmp_path, steps=5, tasks=("t2i", "i2t"))
    recipe["model"]["tokenizer_from"] = str(save_generator(build(spec), tmp_path / "codec"))
    recipe["data"]["n"] = 16
    res = run_unified(recipe)
    assert res["model"].num_queries == 3 and res["model"].tokenizer.__class__.__name__ == "SeedCodec"
    back = load_unified(res["export"])
    px = torch.rand(2, 3, 16, 16) * 2 - 1
    assert back.describe(px) == res["model"].eval().describe(px)
    g = lambda: torch.Generator().manual_seed(0)
    drawn = back.generate_images(["red circle", "blue star"], generator=g(), detok_steps=2)
    assert drawn.shape == (2, 3, 16, 16) and drawn.abs().max() <= 1
    assert torch.equal(drawn, res["model"].generate_images(["red circle", "blue star"], generator=g(), detok_steps=2))
