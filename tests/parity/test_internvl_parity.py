"""InternVL: logits equal transformers' InternVLForConditionalGeneration on tiny random checkpoints
(InternViT with / without QK-norm, LayerNorm / RMSNorm blocks, final norm or not, Qwen2 / Llama
decoders, tied / untied, last or earlier feature layer; several tiles per image, 2 images in a
sample, a batch), generation ids equal transformers' generate, `ocellus.save` reopens in
transformers, and the processor's ids and pixels equal InternVLProcessor's."""
import pytest
import torch

import ocellus
from ocellus.errors import InputError
from _init import assert_logits_match_on_real_tokens, padded, shift_biases_and_norms, spread_init

IMG, START, END = 120, 121, 122     # <IMG_CONTEXT>, <img>, </img>

CASES = [
    dict(vision=dict(image_size=28, patch_size=7, use_qk_norm=True, use_mean_pooling=False),
         text="qwen2", tie=True, layer=-1),
    dict(vision=dict(image_size=56, patch_size=7, norm_type="rms_norm", attention_bias=True, num_hidden_layers=3,
                     hidden_act="gelu_pytorch_tanh"),
         text="llama", tie=False, layer=-2),
    dict(vision=dict(image_size=28, patch_size=7, use_mean_pooling=False), text="qwen2", tie=True, layer=-2),
]


def _reference(vision, text="qwen2", tie=True, layer=-1, vocab=128, image_token_id=IMG):
    import transformers as tf
    vc = {**dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4), **vision}
    tc = dict(model_type=text, vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
              eos_token_id=None, bos_token_id=None)
    cfg = tf.InternVLConfig(vision_config=vc, text_config=tc, image_token_id=image_token_id, downsample_ratio=0.5,
                            vision_feature_layer=layer, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = spread_init(tf.InternVLForConditionalGeneration(cfg).eval())   # attention far from uniform (_init.py)
    # transformers initialises these to zeros / constants too: make every one matter
    return shift_biases_and_norms(model, also=("lambda", "cls_token", "position_embeddings"))


def _per_tile(case) -> int:
    return (case["vision"]["image_size"] // case["vision"]["patch_size"] // 2) ** 2


def _batch(per_tile, tiles_per_image=((3,), (1, 2)), size=28, T=20):
    """Rows of random text with `<img> IMG*k </img>` blocks; left padded; pixels [sum tiles, 3, S, S]."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for tiles in tiles_per_image:
        row = torch.randint(1, 119, (T,), generator=g).tolist()
        for i, n in enumerate(tiles):
            at = 2 + i * (n * per_tile + 5)
            row[at:at] = [START] + [IMG] * (n * per_tile) + [END]
        rows.append(row)
    ids, mask = padded(rows)
    pixels = torch.randn(sum(sum(t) for t in tiles_per_image), 3, size, size, generator=g)
    return ids, mask, pixels


@pytest.mark.parametrize("case", CASES, ids=["qknorm-qwen2-tied", "rmsnorm-llama-layer-2", "final-norm-layer-2"])
def test_logits_equal_transformers(case, tmp_path):
    ref = _reference(**case)
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids, mask, pixels = _batch(_per_tile(case), size=case["vision"]["image_size"])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_tower_on_a_non_square_image_of_the_native_patch_count(tmp_path):
    """2 x 8 patches are as many as the native 4 x 4, but not its grid: the position table is resized."""
    ref = _reference(**CASES[0])
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    pixels = torch.randn(2, 3, 14, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ref.model.vision_tower(pixel_values=pixels).last_hidden_state
        b = ours.vision_tower(pixels)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_generate_equals_transformers_and_save_reopens(tmp_path):
    import transformers
    case = CASES[1]
    ref = _reference(**case)
    ref.save_pretrained(tmp_path / "src")
    ours = ocellus.load(tmp_path / "src")
    ids, mask, pixels = _batch(_per_tile(case), tiles_per_image=((2, 1),), size=56)
    expected = ref.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=12,
                            do_sample=False)
    assert torch.equal(ours.generate(ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=12), expected)
    ocellus.save(ours, tmp_path / "out")
    again = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, pixel_values=pixels).logits,
                                   ours(input_ids=ids, pixel_values=pixels).logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(ocellus.load(tmp_path / "out").state_dict()["vision_tower.encoder.layer.0.lambda_1"],
                       ours.state_dict()["vision_tower.encoder.layer.0.lambda_1"])


def test_tile_count_mismatch_is_input_error(tmp_path):
    _reference(**CASES[0]).save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    ids, _, pixels = _batch(_per_tile(CASES[0]))
    with pytest.raises(InputError, match="sample 1"):
        ours(input_ids=ids, pixel_values=pixels[:5])      # sample 1's second image is missing a tile


def _tokenizer_dir(tmp_path, wrap=("<img>", "</img>")):
    """A tiny BPE with InternVL's image tokens (the start / end pair `wrap`), saved so both transformers and
    Ocellus open it."""
    import json
    from ocellus.data.bpe import train_bpe
    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<IMG_CONTEXT>", *wrap, "<video>")
    tok = train_bpe(["describe the picture please", "a red circle and a blue square"] * 20, 300,
                    special_tokens=specials, image_token="<IMG_CONTEXT>")
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["extra_special_tokens"] = {"context_image_token": "<IMG_CONTEXT>", "start_image_token": wrap[0],
                                   "end_image_token": wrap[1], "video_token": "<video>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("wrap,crop_to_patches", [(("<img>", "</img>"), True), (("<image_start>", "<image_end>"), True),
                                                  (("<img>", "</img>"), False)], ids=["img", "named", "file-says-no-crop"])
def test_processor_equals_internvl_processor(tmp_path, monkeypatch, wrap, crop_to_patches):
    """Tiles with thumbnail, the wrap the tokenizer names (InternVL's <img> / </img>, or another pair), several
    images, different aspect ratios. The hub's -hf checkpoints save crop_to_patches false in their
    preprocessor_config.json: InternVLProcessor tiles anyway (its images_kwargs default), and so must Ocellus."""
    import transformers as tf
    from PIL import Image
    import numpy as np
    d = _tokenizer_dir(tmp_path / "ckpt", wrap)
    hf_tok = tf.AutoTokenizer.from_pretrained(d)
    ref = _reference(**CASES[0], vocab=len(hf_tok), image_token_id=hf_tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    ref.save_pretrained(d)
    image_proc = tf.GotOcr2ImageProcessor(crop_to_patches=crop_to_patches, min_patches=1, max_patches=6,
                                          size={"height": 28, "width": 28})
    image_proc.save_pretrained(d)
    # its class check looks up the video processor, which needs torchvision (not installed): skip only that check
    monkeypatch.setattr(tf.InternVLProcessor, "check_argument_for_proper_class", lambda self, name, arg: None)
    hf = tf.InternVLProcessor(image_processor=image_proc, tokenizer=hf_tok, image_seq_length=4)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for h, w in ((40, 90), (30, 30), (80, 50))]
    text = ["<IMG_CONTEXT>\ndescribe the picture", "a red <IMG_CONTEXT> and <IMG_CONTEXT> please"]
    expected = hf(images=images, text=text, return_tensors="pt", padding=True, padding_side="left")
    got = ocellus.load_processor(d)(text=text, images=images)
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    assert torch.equal(got["attention_mask"], expected["attention_mask"])
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], atol=0, rtol=0)
    assert got["pixel_values"].shape[0] > len(images)   # several tiles (and thumbnails) per image
    assert_logits_match_on_real_tokens(ocellus.load(d), ref, got, expected)
