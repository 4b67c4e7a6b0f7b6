"""Qwen2-VL / Qwen2.5-VL: logits equal transformers' Qwen2VLForConditionalGeneration /
Qwen2_5_VLForConditionalGeneration on tiny random checkpoints (one image, two images of different
sizes, a left-padded batch, a video; Qwen2.5-VL's windowed ViT and absolute-time video ids),
greedy generation ids equal, and what ocellus.save writes reopens in transformers with equal logits.
Inputs are built by hand (transformers' processor needs a real Qwen tokenizer) and the same tensors
go to both sides; transformers 5 also gets its mm_token_type_ids, which Ocellus derives itself."""
import json

import pytest
import torch
from safetensors.torch import save_file

import ocellus
from _init import shift_biases_and_norms, spread_init
from ocellus.errors import InputError

IMG, VID, VS, VE = 120, 121, 122, 123
PATCH = 3 * 2 * 14 * 14


def _reference(variant="qwen2_vl", tie=False, heads=4, kv_heads=2, hidden=32, section=(1, 1, 2), layers=2,
               vision_heads=4, window=56, tokens_per_second=2, vocab=128):
    import transformers as tf
    tc = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
              rope_parameters={"rope_type": "default", "mrope_section": list(section), "rope_theta": 10000.0},
              eos_token_id=None, bos_token_id=None, pad_token_id=0)
    if variant == "qwen2_vl":
        config_class = tf.Qwen2VLConfig
        vc = dict(depth=2, embed_dim=48, hidden_size=hidden, num_heads=vision_heads, mlp_ratio=2)
    else:
        config_class = tf.Qwen2_5_VLConfig
        vc = dict(depth=3, hidden_size=48, out_hidden_size=hidden, intermediate_size=40, num_heads=vision_heads,
                  window_size=window, fullatt_block_indexes=[1], tokens_per_second=tokens_per_second)
    cfg = config_class(text_config=tc, vision_config=vc, image_token_id=IMG, video_token_id=VID,
                       vision_start_token_id=VS, vision_end_token_id=VE, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = spread_init(tf.AutoModelForImageTextToText.from_config(cfg).eval())  # attention far from uniform
    return shift_biases_and_norms(model, also=("ln_q",))   # random norms and biases, so a misplaced one shows


CASES = [
    dict(variant="qwen2_vl"),
    dict(variant="qwen2_vl", tie=True, heads=2, kv_heads=1, hidden=48, section=(4, 4, 4), vision_heads=2),
    dict(variant="qwen2_5_vl"),
    dict(variant="qwen2_5_vl", tie=True, heads=2, kv_heads=2, hidden=48, section=(2, 6, 4), window=112),
]


def _ids(*pieces) -> list[int]:
    """pieces: lists of text ids, or ("image"|"video", n_tokens) media blocks wrapped in vision start/end."""
    out = []
    for p in pieces:
        out += [VS] + [IMG if p[0] == "image" else VID] * p[1] + [VE] if isinstance(p, tuple) else list(p)
    return out


def _left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """rows of ids -> input_ids [B, T] left-padded with 0, attention_mask [B, T]."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = torch.tensor(r), 1
    return ids, mask


def _types(ids: torch.Tensor) -> torch.Tensor:
    return (ids == IMG).long() + 2 * (ids == VID).long()


def _patches(grids, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(torch.as_tensor(grids).prod(-1).sum()), PATCH, generator=g)


def _load_both(case, tmp_path):
    ref = _reference(**case)
    ref.save_pretrained(tmp_path / "ref")
    return ref, ocellus.load(tmp_path / "ref")


def _compare(ref, ours, **inputs):
    with torch.no_grad():
        want = ref(**inputs, mm_token_type_ids=_types(inputs["input_ids"])).logits
        got = ours(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_images_logits_equal_transformers(case, tmp_path):
    ref, ours = _load_both(case, tmp_path)
    # one image; then two images of different sizes (8x12 and 4x4 patches) packed in one ViT sequence
    grids = torch.tensor([[1, 8, 12]])
    ids = torch.tensor([_ids([5, 6], ("image", 24), [7, 8, 9])])
    _compare(ref, ours, input_ids=ids, pixel_values=_patches(grids), image_grid_thw=grids)
    grids = torch.tensor([[1, 8, 12], [1, 4, 4]])
    ids = torch.tensor([_ids([5, 6], ("image", 24), [7, 8, 9], ("image", 4), [10, 11])])
    _compare(ref, ours, input_ids=ids, pixel_values=_patches(grids), image_grid_thw=grids)


@pytest.mark.parametrize("case", CASES[:3:2], ids=lambda c: c["variant"])
def test_left_padded_batch_logits_equal_transformers(case, tmp_path):
    ref, ours = _load_both(case, tmp_path)
    rows = [_ids([5], ("image", 6), [7, 8]), _ids([9, 3, 4], ("image", 4), [6], ("image", 24), [5])]
    grids = torch.tensor([[1, 4, 6], [1, 4, 4], [1, 8, 12]])
    ids, mask = _left_padded(rows)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, pixel_values=_patches(grids), image_grid_thw=grids,
                   mm_token_type_ids=_types(ids)).logits
        got = ours(input_ids=ids, attention_mask=mask, pixel_values=_patches(grids), image_grid_thw=grids).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", CASES[:3:2], ids=lambda c: c["variant"])
def test_video_logits_equal_transformers(case, tmp_path):
    """A 3-temporal-patch video next to an image. Qwen2.5-VL spaces the frames by
    tokens_per_second * second_per_grid_ts = 2 * 0.75 = 1.5 ids (absolute time; ids 0, 1, 3 after
    truncation). The last temporal id stays below the merged width, where transformers 5.23's rule for
    the text after a video agrees with max + 1 (see nn/mrope.py)."""
    ref, ours = _load_both(case, tmp_path)
    video = torch.tensor([[3, 4, 8]])   # 3 temporal patches, 2 x 4 merged
    image = torch.tensor([[1, 4, 4]])
    ids = torch.tensor([_ids([5, 6], ("video", 24), [7], ("image", 4), [8, 9])])
    inputs = dict(input_ids=ids, pixel_values_videos=_patches(video, 1), video_grid_thw=video,
                  pixel_values=_patches(image, 2), image_grid_thw=image)
    if case["variant"] == "qwen2_5_vl":
        inputs["second_per_grid_ts"] = torch.tensor([0.75])
    _compare(ref, ours, **inputs)


@pytest.mark.parametrize("case", CASES[:3:2], ids=lambda c: c["variant"])
def test_greedy_generation_ids_equal_transformers(case, tmp_path):
    ref, ours = _load_both(case, tmp_path)
    rows = [_ids([5], ("image", 6), [7, 8]), _ids([9, 3, 4], ("image", 4), [6, 5])]
    grids = torch.tensor([[1, 4, 6], [1, 4, 4]])
    ids, mask = _left_padded(rows)
    pixels = _patches(grids)
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids,
                            mm_token_type_ids=_types(ids), max_new_tokens=12, do_sample=False)
    got = ours.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids,
                        max_new_tokens=12, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("case", CASES[1::2], ids=lambda c: c["variant"])
def test_save_reopens_in_transformers(case, tmp_path):
    import transformers as tf
    ref, ours = _load_both(case, tmp_path)
    ocellus.save(ours, tmp_path / "ours")
    again = tf.AutoModelForImageTextToText.from_pretrained(tmp_path / "ours").eval()
    assert type(again) is type(ref)
    grids = torch.tensor([[1, 4, 8]])
    ids = torch.tensor([_ids([5, 6], ("image", 8), [7, 8, 9])])
    _compare(again, ours, input_ids=ids, pixel_values=_patches(grids), image_grid_thw=grids)
    assert ocellus.load(tmp_path / "ours").language_model.config.tie_word_embeddings == case["tie"]


def test_in_memory_layout_and_flat_4x_config_load(tmp_path):
    """transformers 5's in-memory names (model.language_model.*, model.visual.*) and a 4.x-style
    config.json (text fields at the top level, rope_scaling type "mrope") load to the same logits, the rotary
    inv_freq buffers older exports carry dropped; saved back, the config is the nested layout only (no stale
    top-level text fields) and transformers reopens it with the same logits."""
    import transformers as tf
    ref = _reference("qwen2_vl")
    out = tmp_path / "flat"
    out.mkdir()
    tensors = {k: v.contiguous() for k, v in ref.state_dict().items()}
    tensors["model.visual.rotary_pos_emb.inv_freq"] = ref.model.visual.rotary_pos_emb.inv_freq.clone()
    tensors["model.language_model.rotary_emb.inv_freq"] = ref.model.language_model.rotary_emb.inv_freq.clone()
    save_file(tensors, str(out / "model.safetensors"))
    cfg = ref.config.to_dict()
    text = cfg.pop("text_config")
    text["rope_scaling"] = {"type": "mrope", "mrope_section": text.pop("rope_parameters")["mrope_section"]}
    (out / "config.json").write_text(json.dumps({**cfg, **text, "model_type": "qwen2_vl",
                                                 "architectures": ["Qwen2VLForConditionalGeneration"]}))
    ours = ocellus.load(out)
    grids = torch.tensor([[1, 4, 4]])
    inputs = dict(input_ids=torch.tensor([_ids([5], ("image", 4), [6])]), pixel_values=_patches(grids),
                  image_grid_thw=grids)
    _compare(ref, ours, **inputs)
    ocellus.save(ours, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["text_config"]["hidden_size"] == 32 and not {"hidden_size", "vocab_size", "rope_scaling"} & set(saved)
    _compare(tf.AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval(), ours, **inputs)


def test_media_count_mismatches_raise(tmp_path):
    _, ours = _load_both(CASES[0], tmp_path)
    grids = torch.tensor([[1, 4, 4], [1, 4, 4]])
    one_image = torch.tensor([_ids([5], ("image", 4), [6])])
    with pytest.raises(InputError, match="image"):        # two grids, one placeholder block
        ours(input_ids=one_image, pixel_values=_patches(grids), image_grid_thw=grids)
    with pytest.raises(InputError, match="no image pixels"):
        ours(input_ids=one_image)
    with pytest.raises(InputError, match="divisible by the merge size"):
        ours(input_ids=one_image, pixel_values=_patches([[1, 3, 4]]), image_grid_thw=torch.tensor([[1, 3, 4]]))
    with pytest.raises(InputError, match="mm_token_type_ids"):
        ours(input_ids=one_image, pixel_values=_patches(grids[:1]), image_grid_thw=grids[:1],
             mm_token_type_ids=torch.zeros_like(one_image))
    with pytest.raises(InputError, match="plain text positions"):
        ours(input_ids=one_image, pixel_values=_patches(grids[:1]), image_grid_thw=grids[:1],
             position_ids=torch.zeros_like(one_image))


QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_processor_from_a_qwen_style_checkpoint_dir(tmp_path):
    """A checkpoint dir as Qwen2-VL ships: <|image_pad|> wrapped in <|vision_start|>/<|vision_end|> by the
    chat template, Qwen2VLImageProcessor's preprocessor_config.json. Pixels and grids equal transformers'
    image processor, each image becomes t*h*w/4 pads between the markers, and the logits equal transformers'."""
    import numpy as np
    import transformers as tf
    from PIL import Image
    from ocellus.data.bpe import train_bpe
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")
    tok = train_bpe(["what is in the picture? a red circle and a blue square"] * 20, 300, specials,
                    chat_template=QWEN_TEMPLATE, image_token="<|image_pad|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    ref = _reference("qwen2_vl", vocab=len(tok))
    ref.config.image_token_id, ref.config.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
    ref.config.vision_start_token_id, ref.config.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    ref.model.config.image_token_id = ids["<|image_pad|>"]
    ref.save_pretrained(tmp_path)
    tok.save(tmp_path)
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 84)
    image_processor.save_pretrained(tmp_path)
    proc, model = ocellus.load_processor(tmp_path), ocellus.load(tmp_path)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((50, 70), (120, 40))]
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"},
                                                        {"type": "image"}]}], images=images)
    want = image_processor(images=images, return_tensors="pt")
    assert torch.equal(batch["image_grid_thw"], want["image_grid_thw"])
    torch.testing.assert_close(batch["pixel_values"], want["pixel_values"])
    row = batch["input_ids"][0].tolist()
    counts = [int(t * h * w) // 4 for t, h, w in want["image_grid_thw"].tolist()]
    for n in counts:  # each image: start marker, its pads, end marker
        at = row.index(ids["<|vision_start|>"])
        assert row[at + 1:at + 2 + n] == [ids["<|image_pad|>"]] * n + [ids["<|vision_end|>"]]
        row = row[at + 2 + n:]
    with torch.no_grad():
        got = model(**batch).logits
        want_logits = ref(**batch, mm_token_type_ids=(batch["input_ids"] == ids["<|image_pad|>"]).long()).logits
    torch.testing.assert_close(got, want_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="below min_pixels"):
        proc(text="<|vision_start|><|image_pad|><|vision_end|>", images=[images[0].resize((20, 20))])


@pytest.mark.parametrize("case", CASES[:2], ids=["qwen2_vl-gqa", "qwen2_vl-mqa-tied"])
def test_training_loss_and_gradients_equal_transformers(case, tmp_path):
    """M-RoPE ids gathered at the trained rows (ours runs the last decoder layer only there), left
    padding: loss and the gradients reaching the patches and the last layer equal transformers'."""
    ref, ours = _load_both(case, tmp_path)
    rows = [_ids([5], ("image", 6), [7, 8, 9, 10]), _ids([9, 3, 4], ("image", 4), [6, 11, 12], ("image", 24), [5, 13])]
    grids = torch.tensor([[1, 4, 6], [1, 4, 4], [1, 8, 12]])
    ids, mask = _left_padded(rows)
    labels = ids.masked_fill((mask == 0) | (ids >= IMG), -100)
    labels[:, 1:].masked_fill_(mask[:, :-1] == 0, -100)            # no target predicted from a padding slot
    labels[1, -6:-3] = -100
    found = []
    for model, extra in ((ref, {"mm_token_type_ids": _types(ids)}), (ours, {})):
        patches = _patches(grids).requires_grad_()
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=patches, image_grid_thw=grids, labels=labels,
                     **extra).loss
        loss.backward()
        layer = (model.model.language_model if model is ref else model.language_model).layers[-1]
        found.append((loss.detach(), patches.grad, layer.self_attn.q_proj.weight.grad, layer.mlp.up_proj.weight.grad))
    for got, want in zip(found[1], found[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
