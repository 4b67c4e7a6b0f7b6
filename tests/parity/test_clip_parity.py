"""Ocellus' CLIP / SigLIP dual encoders and text towers equal transformers on tiny random checkpoints:
CLIPModel / SiglipModel logits_per_image, logits_per_text and embeddings (two configs each: head
dims, image sizes, layer counts, the two CLIP EOS rules, padded and unpadded texts);
CLIPTextModel, CLIPTextModelWithProjection and SiglipTextModel outputs; `ocellus.save` writes
checkpoints transformers reopens with equal logits; the LLaVA-style vision loader still takes the
image tower of these checkpoints."""
import pytest
import torch

import ocellus
from ocellus.errors import InputError
from ocellus.models.families.vit.checkpoint import load_vision
from ocellus.models.contrastive.clip import DualEncoder
from _init import shift_biases_and_norms, spread_init

VOCAB = 61
CONFIGS = {
    # eos id inside the vocab (first-EOS rule), 2 image/text layers, head dim 8
    "a": dict(text=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=12, eos_token_id=7, pad_token_id=1,
                        bos_token_id=3),
              vision=dict(image_size=16, patch_size=4, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                          num_attention_heads=4),
              projection_dim=24),
    # eos id 2 (transformers' legacy argmax rule), other widths, 3 layers, head dim 16, larger image
    "b": dict(text=dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=3, max_position_embeddings=10, eos_token_id=2, pad_token_id=0,
                        bos_token_id=1),
              vision=dict(image_size=24, patch_size=6, hidden_size=40, intermediate_size=56, num_hidden_layers=3,
                          num_attention_heads=5),
              projection_dim=16),
}


def _randomise(model):
    """Biases and norms start at 0 / 1: shift them so their handling is tested; scale/bias off init."""
    torch.manual_seed(1)
    return shift_biases_and_norms(model, also=("logit_scale", "logit_bias")).eval()


def reference(kind: str, name: str):
    import transformers as tf
    c = CONFIGS[name]
    torch.manual_seed(0)
    if kind == "clip":
        cfg = tf.CLIPConfig(text_config=c["text"], vision_config=c["vision"], projection_dim=c["projection_dim"])
        return _randomise(spread_init(tf.CLIPModel(cfg)))   # attention far from uniform (tests/parity/_init.py)
    text = {**c["text"], "projection_size": c["vision"]["hidden_size"]}   # the image embedding width
    return _randomise(spread_init(tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=c["vision"]))))


def texts(name: str, padded, seed: int = 0):
    """4 texts of different lengths ending in EOS, right-padded (or all full length); padded="eos" pads with the
    EOS id itself (encode_texts' padding for a tokenizer without a pad token): the first EOS is the feature."""
    t = CONFIGS[name]["text"]
    T, eos, pad = t["max_position_embeddings"], t["eos_token_id"], t["pad_token_id"]
    pad = eos if padded == "eos" and eos != 2 else pad
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, VOCAB, (4, T), generator=g)    # ids >= 8: never eos/pad/bos by accident
    mask = torch.ones(4, T, dtype=torch.long)
    lengths = [T, T - 3, 4, T - 1] if padded else [T] * 4
    for i, n in enumerate(lengths):
        ids[i, n - 1] = eos if eos != 2 else VOCAB - 1 - i   # legacy rule: EOS is the row's highest id
        ids[i, n:] = pad
        mask[i, n:] = 0
    return ids, mask


def pixels(name: str, n: int = 3, seed: int = 0):
    s = CONFIGS[name]["vision"]["image_size"]
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=[(k, n) for k in ("clip", "siglip") for n in CONFIGS], ids=lambda p: "-".join(p))
def pair(request, tmp_path_factory):
    kind, name = request.param
    ref = reference(kind, name)
    path = tmp_path_factory.mktemp(f"{kind}-{name}")
    ref.save_pretrained(path)
    return kind, name, ref, ocellus.load(path), path


def _compare(ref, ours, ids, mask, px):
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, pixel_values=px)
        o = ours(input_ids=ids, attention_mask=mask, pixel_values=px)
    for field in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        torch.testing.assert_close(getattr(o, field), getattr(r, field), atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{field}: {m}")


@pytest.mark.parametrize("padded", [False, True, "eos"], ids=["full", "padded", "padded-with-eos"])
def test_logits_equal_transformers(pair, padded):
    kind, name, ref, ours, _ = pair
    assert isinstance(ours, DualEncoder) and ours.family_name == kind
    ids, mask = texts(name, padded)
    _compare(ref, ours, ids, mask, pixels(name))


def test_save_reopens_in_transformers(pair, tmp_path):
    import transformers as tf
    kind, name, ref, ours, _ = pair
    ocellus.save(ours, tmp_path)
    back = {"clip": tf.CLIPModel, "siglip": tf.SiglipModel}[kind].from_pretrained(tmp_path).eval()
    ids, mask = texts(name, padded=True, seed=3)
    _compare(back, ours, ids, mask, pixels(name, seed=3))
    again = ocellus.load(tmp_path)       # and our own export loads back
    assert again.family_name == kind


def test_vision_loader_takes_the_image_tower(pair):
    """LLaVA composes from `vision_from` dirs through load_vision: a full dual-encoder dir still works."""
    kind, name, ref, ours, path = pair
    tower = load_vision(path)
    px = pixels(name)
    with torch.no_grad():
        torch.testing.assert_close(tower(px).pooler_output, ours.vision_model(px).pooler_output)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("arch", ["CLIPTextModel", "CLIPTextModelWithProjection", "SiglipTextModel"])
def test_text_models_equal_transformers(arch, name, tmp_path):
    import transformers as tf
    c = CONFIGS[name]
    torch.manual_seed(0)
    if arch == "SiglipTextModel":
        ref = tf.SiglipTextModel(tf.SiglipTextConfig(**c["text"], projection_size=c["projection_dim"]))
    else:
        ref = getattr(tf, arch)(tf.CLIPTextConfig(**c["text"], projection_dim=c["projection_dim"]))
    _randomise(spread_init(ref)).save_pretrained(tmp_path / "ref")
    ours = ocellus.load(tmp_path / "ref")
    ids, mask = texts(name, padded=True)
    with torch.no_grad():
        r, o = ref(input_ids=ids, attention_mask=mask), ours(ids, mask)
    ref_pooled = r.text_embeds if arch == "CLIPTextModelWithProjection" else r.pooler_output
    torch.testing.assert_close(o.pooler_output, ref_pooled, atol=1e-5, rtol=1e-5)
    # CLIP's causal mask lets a pad query also see itself (ocellus/nn/masks.py: no row is ever empty, so
    # left padding cannot produce NaN); transformers' does not: only pad positions, which nothing reads,
    # may differ. SigLIP pools the last position, pad or not: there every position must match.
    real = mask.bool() if arch != "SiglipTextModel" else torch.ones_like(mask, dtype=torch.bool)
    torch.testing.assert_close(o.last_hidden_state[real], r.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    ocellus.save(ours, tmp_path / "ours")
    back = getattr(tf, arch).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        b = back(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(b.text_embeds if arch == "CLIPTextModelWithProjection" else b.pooler_output,
                               ref_pooled, atol=1e-5, rtol=1e-5)


def test_missing_eos_is_an_error(pair):
    kind, name, _, ours, _ = pair
    if kind != "clip" or CONFIGS[name]["text"]["eos_token_id"] == 2:
        pytest.skip("only CLIP's first-EOS rule needs an EOS in every row")
    ids, mask = texts(name, padded=False)
    ids[1] = 9                                     # row 1 without EOS: transformers would pool position 0
    with pytest.raises(InputError, match=r"rows \[1\].*end-of-text"):
        ours(input_ids=ids, attention_mask=mask, pixel_values=pixels(name))
