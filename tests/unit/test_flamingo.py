"""Flamingo: gated cross-attention over a frozen decoder, the per-token media mask, interleaved
multi-image sequences, KV-cached generation, and our checkpoint format round-tripping exactly.

There is no transformers reference for Flamingo; these test what the paper states (gates at 0
leave the LM unchanged, a token sees only the image just before it) and cached == uncached."""
import json

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError, InputError
from ocellus.models.families.flamingo.modeling import Flamingo, build_flamingo, cross_attn_layers
from ocellus.models.fusion_xattn import media_mask, media_time
from ocellus.train.stages import apply_stage

IMG = 5  # the image token id of the tiny configs
VOCAB = 64


def tiny_config(vision: str = "vit", layers: int = 4, every: int = 2, tied: bool = True, frames=None) -> dict:
    if vision == "vit":
        vision_cfg = {"model_type": "clip_vision_model", "image_size": 24, "patch_size": 6, "hidden_size": 32,
                      "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    else:
        vision_cfg = {"model_type": "ocellus_resnet", "image_size": 32, "stem_width": 8, "widths": [8, 16],
                      "depths": [1, 1], "hidden_size": 24, "norm_groups": 4}
    text = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 96,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "tie_word_embeddings": tied, "eos_token_id": None}
    return {"architectures": ["OcellusFlamingoForConditionalGeneration"], "model_type": "ocellus_flamingo",
            "vision_config": vision_cfg, "text_config": text, "image_token_index": IMG,
            "perceiver_config": {"depth": 1, "num_latents": 3, "heads": 2, "head_dim": 8, "max_num_frames": frames},
            "cross_attn_config": {"heads": 2, "head_dim": 8, "ff_mult": 2}, "cross_attn_every_n_layers": every}


CONFIGS = [dict(vision="vit", layers=4, every=2, tied=True), dict(vision="resnet", layers=3, every=1, tied=False)]


def tiny_flamingo(gates: float | None = None, seed: int = 0, **kw) -> Flamingo:
    torch.manual_seed(seed)
    model = build_flamingo(tiny_config(**kw)).eval()
    model.family_name = "flamingo"
    if gates is not None:  # a trained-looking model: open gates, different per block
        with torch.no_grad():
            for i, block in enumerate(model.gated_cross_attn.values()):
                block.attn_gate.fill_(gates + 0.1 * i)
                block.ff_gate.fill_(-gates)
    return model


def pixels(model: Flamingo, n: int, seed: int = 1) -> torch.Tensor:
    size = model.vision_tower.config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ids(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# interleaved: text, image 1, text, image 2, text
ROW = [9, 10, IMG, 11, 12, 13, IMG, 14, 15, 16]


@pytest.mark.parametrize("kw", CONFIGS)
def test_gates_at_zero_leave_the_decoder_exactly_unchanged(kw):
    model = tiny_flamingo(**kw)  # fresh blocks: gates at 0
    assert all(b.attn_gate.item() == 0 and b.ff_gate.item() == 0 for b in model.gated_cross_attn.values())
    x = ids(ROW, [9, IMG, 20, 21, 22, 23, 24, IMG, IMG, 25])
    px = pixels(model, 5)
    plain = model.language_model(input_ids=x).logits
    assert torch.equal(model(input_ids=x, pixel_values=px).logits, plain)
    # ... and under KV-cached generation, with left padding
    mask = torch.ones_like(x)
    mask[1, :2] = 0
    got = model.generate(input_ids=x, attention_mask=mask, pixel_values=px, max_new_tokens=6)
    want = model.language_model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6)
    assert torch.equal(got, want)
    # the same model with open gates is a different model: the test above can fail
    with torch.no_grad():
        next(iter(model.gated_cross_attn.values())).attn_gate.fill_(1.0)
    assert not torch.allclose(model(input_ids=x, pixel_values=px).logits, plain, atol=1e-4)


def test_media_time_and_mask_on_a_hand_built_sequence():
    x = ids([7, 8, IMG, 9, 10, IMG, 11], [IMG, 7, 7, 7, 7, 7, 7])
    t = media_time(x, IMG)
    assert t.tolist() == [[0, 0, 1, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1, 1]]
    m = media_mask(t, num_media=2, tokens_per_media=3)                  # [B, 1, T, 2*3]
    assert m.shape == (2, 1, 7, 6)
    image1, image2 = [True] * 3 + [False] * 3, [False] * 3 + [True] * 3
    assert m[0, 0, 2].tolist() == image1 and m[0, 0, 4].tolist() == image1   # <image> 1 and the text after it
    assert m[0, 0, 5].tolist() == image2 and m[0, 0, 6].tolist() == image2   # image 2 only, never image 1
    assert m[1, 0, 6].tolist() == image1                                     # row 1 has one image: slot 1
    # before the first image every key is "allowed" only to keep softmax finite; the block zeroes it
    assert m[0, 0, 0].all()


@pytest.mark.parametrize("kw", CONFIGS)
def test_text_sees_only_the_image_just_before_it(kw):
    """Cross-attention reads only the latest image: what the first block's cross-attention gives the
    text after image 2 does not change when image 1 does. (Deeper blocks, and the logits, still
    depend on image 1 through the LM's self-attention over the tokens in between: "the dependency on
    all previous images remains via self-attention in the LM", section 2.3. Checked too.)"""
    model = tiny_flamingo(gates=0.7, **kw)
    x = ids(ROW)
    px = pixels(model, 2)
    other = px.clone()
    other[0] = pixels(model, 1, seed=99)[0]                             # change image 1 only
    first = model.gated_cross_attn[min(model.gated_cross_attn, key=int)]
    seen = []
    hook = first.attn.register_forward_hook(lambda m, i, out: seen.append(out))
    a = model(input_ids=x, pixel_values=px).logits
    b = model(input_ids=x, pixel_values=other).logits
    hook.remove()
    second = ROW.index(IMG, 3)
    torch.testing.assert_close(seen[0][:, second:], seen[1][:, second:], atol=1e-6, rtol=0)
    assert not torch.allclose(seen[0][:, 2:second], seen[1][:, 2:second], atol=1e-4)   # image 1's text: changed
    assert not torch.allclose(a[:, second:], b[:, second:], atol=1e-6)                 # via self-attention
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=0, rtol=0)                     # before image 1: untouched
    # tokens before the first image get no cross-attention at all: as without any image in the row
    text_only = model(input_ids=ids(ROW[:2])).logits
    torch.testing.assert_close(a[:, :2], text_only, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kw", CONFIGS)
def test_batched_rows_with_different_image_counts_equal_each_row_alone(kw):
    model = tiny_flamingo(gates=0.5, **kw)
    rows = [ROW, [9, 9, 9, IMG, 10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]]
    counts = [2, 1, 0]
    px = pixels(model, 3)
    batched = model(input_ids=ids(*rows), pixel_values=px).logits
    start = 0
    for b, (r, n) in enumerate(zip(rows, counts)):
        alone = model(input_ids=ids(r), pixel_values=px[start:start + n] if n else None).logits
        torch.testing.assert_close(batched[b], alone[0], atol=1e-5, rtol=1e-5)
        start += n


def _greedy_without_cache(model, x, mask, px, n):
    """The reference: every step re-runs the whole sequence (no cache), positions as the engine."""
    for _ in range(n):
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        nxt = model(input_ids=x, attention_mask=mask, position_ids=pos, pixel_values=px).logits[:, -1].argmax(-1)
        x = torch.cat([x, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return x


@pytest.mark.parametrize("kw", CONFIGS)
def test_cached_generation_equals_uncached(kw):
    model = tiny_flamingo(gates=0.8, **kw)
    x = ids([0, 0, 9, IMG, 10, 11, IMG, 12], [9, 10, 11, 12, IMG, 13, 14, 15])
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    px = pixels(model, 3)
    got = model.generate(input_ids=x, attention_mask=mask, pixel_values=px, max_new_tokens=8)
    assert not (got[:, x.shape[1]:] == IMG).any(), "a generated image token: pick another seed"
    want = _greedy_without_cache(model, x, mask, px, 8)
    assert torch.equal(got, want)
    # a decode step's logits equal the full forward's: row 0's new token sees its second image, row 1's its first
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        model(input_ids=x, attention_mask=mask, position_ids=pos, pixel_values=px, cache=cache)
        nxt, mask2 = got[:, x.shape[1]:x.shape[1] + 1], torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        step = model(input_ids=nxt, attention_mask=mask2, position_ids=pos[:, -1:] + 1, cache=cache).logits[:, -1]
        full = model(input_ids=torch.cat([x, nxt], 1), attention_mask=mask2,
                     position_ids=torch.cat([pos, pos[:, -1:] + 1], 1), pixel_values=px).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    # the media keys/values are computed once, at prefill: decode steps never resample the images
    calls = []
    hook = model.perceiver.register_forward_hook(lambda *a: calls.append(1))
    model.generate(input_ids=x, attention_mask=mask, pixel_values=px, max_new_tokens=4)
    hook.remove()
    assert len(calls) == 1


def test_beam_search_with_one_image_per_row_and_a_clear_error_for_more():
    model = tiny_flamingo(gates=0.8)
    x = ids([9, IMG, 10, 11], [IMG, 12, 13, 14])
    px = pixels(model, 2)
    beams = model.generate(input_ids=x, pixel_values=px, max_new_tokens=4, num_beams=2)
    # each row's beams read that row's image: row by row equals the batch
    for b in range(2):
        alone = model.generate(input_ids=x[b:b + 1], pixel_values=px[b:b + 1], max_new_tokens=4, num_beams=2)
        assert torch.equal(beams[b:b + 1], alone)
    with pytest.raises(NotImplementedError, match="several images in one row"):
        model.generate(input_ids=ids(ROW), pixel_values=pixels(model, 2), max_new_tokens=2, num_beams=2)


def test_parts_and_a_stage_train_only_the_connector():
    model = tiny_flamingo()
    model.train()
    parts = model.parts()
    assert set(parts) == {"vision", "connector", "llm"}
    connector = {id(p) for p in parts["connector"].parameters()}
    assert {id(p) for p in model.perceiver.parameters()} <= connector
    assert {id(p) for p in model.gated_cross_attn.parameters()} <= connector
    n_all = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for m in parts.values() for p in m.parameters()) == n_all   # every weight has a part
    report = apply_stage(model, {"vision": "frozen", "connector": "full", "llm": "frozen"})
    assert report.counts["llm"][0] == 0 and report.counts["vision"][0] == 0 and report.counts["connector"][0] > 0
    x = ids(ROW)
    model(input_ids=x, pixel_values=pixels(model, 2), labels=x).loss.backward()
    assert all(p.grad is None for p in model.language_model.parameters())
    assert all(p.grad is None for p in model.vision_tower.parameters())
    # with gates at 0 only the gates get a gradient through the blocks, as in the paper's init
    block = next(iter(model.gated_cross_attn.values()))
    assert block.attn_gate.grad.abs().item() > 0 and block.ff_gate.grad.abs().item() > 0
    assert model.perceiver.latents.grad is not None


@pytest.mark.parametrize("kw", CONFIGS)
def test_save_and_load_round_trip_exactly(kw, tmp_path):
    model = tiny_flamingo(gates=0.3, **kw)
    ocellus.save(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["OcellusFlamingoForConditionalGeneration"]
    assert cfg["model_type"] == "ocellus_flamingo" and cfg["cross_attn_every_n_layers"] == kw["every"]
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert ("language_model.lm_head.weight" in names) == (not kw["tied"])
    assert any(n.startswith("gated_cross_attn.") for n in names) and "perceiver.latents" in names
    if kw["vision"] == "vit":
        assert any(n.startswith("vision_tower.vision_model.encoder.layers.") for n in names)
    loaded = ocellus.load(tmp_path)
    assert isinstance(loaded, Flamingo) and loaded.family_name == "flamingo"
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x, px = ids(ROW), pixels(model, 2)
    assert torch.equal(model(input_ids=x, pixel_values=px).logits, loaded(input_ids=x, pixel_values=px).logits)


def test_save_writes_the_feature_layer_and_selection_it_reads(tmp_path):
    """config.json carries the model's own vision feature layer and token selection (not the defaults -1 /
    'default'): reloaded, the perceiver reads the same features, so the logits are equal."""
    torch.manual_seed(0)
    model = build_flamingo({**tiny_config(), "vision_feature_layer": -2, "vision_feature_select_strategy": "full"})
    model.family_name = "flamingo"
    with torch.no_grad():
        for block in model.gated_cross_attn.values():   # open gates: the image features reach the logits
            block.attn_gate.fill_(0.5)
    ocellus.save(model.eval(), tmp_path)
    loaded = ocellus.load(tmp_path)
    assert (loaded.feature_layer, loaded.feature_select) == (-2, "full")
    x, px = ids(ROW), pixels(model, 2)
    assert torch.equal(model(input_ids=x, pixel_values=px).logits, loaded(input_ids=x, pixel_values=px).logits)


def test_video_media_use_frame_embeddings():
    model = tiny_flamingo(gates=0.5, frames=3)
    size = model.vision_tower.config.image_size
    video = torch.randn(1, 3, 3, size, size)                            # [N, F, 3, H, W]
    x = ids([9, IMG, 10, 11])
    a = model(input_ids=x, pixel_values=video).logits
    b = model(input_ids=x, pixel_values=video[:, [2, 1, 0]]).logits
    assert not torch.allclose(a[:, 1:], b[:, 1:], atol=1e-5)             # frame order matters


def test_bad_inputs_name_the_problem():
    model = tiny_flamingo()
    with pytest.raises(InputError, match=r"holds 1 images but input_ids hold 2 image tokens \(per row: \[2\]\)"):
        model(input_ids=ids(ROW), pixel_values=pixels(model, 1))
    with pytest.raises(InputError, match=r"rows \[0\] of input_ids hold image tokens"):
        model(input_ids=ids(ROW))
    cache = model.new_cache(1, 32)
    model(input_ids=ids(ROW), pixel_values=pixels(model, 2), cache=cache)
    with pytest.raises(InputError, match="read at prefill"):
        model(input_ids=ids([9]), pixel_values=pixels(model, 1), cache=cache)
    with pytest.raises(ConfigError, match="cross_attn_every_n_layers"):
        cross_attn_layers(4, 5)
    with pytest.raises(ConfigError, match="perceiver_config"):
        build_flamingo({k: v for k, v in tiny_config().items() if k != "perceiver_config"})
    with pytest.raises(ConfigError, match="cross_attn_config: unknown"):
        build_flamingo({**tiny_config(), "cross_attn_config": {"heads": 2, "dim": 3}})
