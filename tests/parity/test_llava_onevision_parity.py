"""LLaVA-OneVision: logits equal transformers' LlavaOnevisionForConditionalGeneration on a tiny random checkpoint
(SigLIP tower, Qwen2 text) for images of several aspect ratios in one batch, some of whose unpadded grids exceed
the anyres_max_N cap and are bilinearly shrunk (and one that does not); greedy ids equal transformers' generate;
`ocellus.save` reopens in transformers with equal logits and the same config; the processor's pixels and ids
equal LlavaOnevisionProcessor's (its PIL image processor: 6 x 6 style canvases, views of the tower's size). What
Ocellus does not compute for OneVision (videos, several images in one sample) is a ConfigError naming it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ocellus
from ocellus.data.image import ImageProcessorConfig
from ocellus.data.image_tiling import anyres_max_shape, anyres_unpad_box, preprocess_anyres, select_best_resolution
from ocellus.errors import ConfigError
from ocellus.models.families.llava_onevision.modeling import build_llava_onevision
from _init import assert_logits_match_on_real_tokens, padded, shift_biases_and_norms, spread_init, tiny_llava_towers

IMG = 100
TILE, PATCH = 32, 8
SIDE = TILE // PATCH
PINPOINTS = [[TILE * r, TILE * c] for r in range(1, 4) for c in range(1, 4)]   # 1..3 x 1..3 tiles
MAX = 2   # anyres_max_2: a grid over ~2 tiles' features (32) is shrunk
# (H, W): 1x2 canvas (under the cap, rows unpadded), 3x3 (12x12 -> 5x5), 1x3 (4x12 -> 3x9), 3x1 (12x4 -> 9x3),
# 2x3 (8x12, rows unpadded to 6x12 -> 4x8: the cap after the unpadding)
SIZES = [(30, 62), (95, 96), (31, 95), (96, 29), (40, 90)]


def _reference(vocab=120, image_token=IMG):
    import transformers as tf
    vision_cfg, tc = tiny_llava_towers("siglip", "qwen2", max_positions=1024)
    vision_cfg.vision_use_head = False   # as OneVision's checkpoints ship their SigLIP tower: no pooling head
    cfg = tf.LlavaOnevisionConfig(vision_config=vision_cfg, text_config={**tc, "vocab_size": vocab},
                                  image_token_index=image_token,
                                  image_grid_pinpoints=PINPOINTS, vision_aspect_ratio=f"anyres_max_{MAX}")
    torch.manual_seed(0)
    model = spread_init(tf.LlavaOnevisionForConditionalGeneration(cfg).eval())   # attention far from uniform
    return shift_biases_and_norms(model, also=("image_newline",))


def _grid(size):
    """(unpadded rows, cols) of an image's tile-feature map, and after the cap."""
    h, w = select_best_resolution(size, PINPOINTS)
    top, bottom, left, right = anyres_unpad_box(size, (h // TILE * SIDE, w // TILE * SIDE))
    rows, cols = bottom - top, right - left
    return (rows, cols), anyres_max_shape(rows, cols, SIDE, MAX)


def test_the_sizes_reach_the_cap_and_stay_under_it():
    grids = [_grid(s) for s in SIZES]
    assert grids[0][0] == grids[0][1] and grids[1][1] == (5, 5) and grids[2][1] == (3, 9)
    assert grids[3][1] == (9, 3) and grids[4] == ((6, 12), (4, 8))


def test_token_counts_equal_transformers_processor_at_real_scale():
    """OneVision's real geometry (384 px tiles of 27 x 27 SigLIP patches, its 6 x 6 canvases, anyres_max_9) over
    ~1000 image sizes: the count equals LlavaOnevisionProcessor's, sizes under, just over (ratio in (1, 1.1]:
    not shrunk) and far over the cap among them."""
    import functools
    import math
    from types import SimpleNamespace
    import transformers as tf
    from ocellus.data.image_tiling import tokens_per_image
    from ocellus.models.families.llava_onevision.modeling import DEFAULT_GRID_PINPOINTS
    hf = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=DEFAULT_GRID_PINPOINTS),
                         num_image_tokens=27 * 27, vision_aspect_ratio="anyres_max_9")
    hf._get_unpadded_features = functools.partial(tf.LlavaOnevisionProcessor._get_unpadded_features, hf)
    ratios = set()
    for h in range(90, 3000, 97):
        for w in range(60, 3000, 89):
            ours = tokens_per_image("anyres", image_size=(h, w), grid_pinpoints=DEFAULT_GRID_PINPOINTS, tile_size=384,
                                    patch_size=14, feature_select="full", num_extra_tokens=0, max_patches=9)
            assert ours == tf.LlavaOnevisionProcessor._get_number_of_features(hf, h, w, 384, 384), (h, w)
            bh, bw = select_best_resolution((h, w), DEFAULT_GRID_PINPOINTS)
            top, bottom, left, right = anyres_unpad_box((h, w), (bh // 384 * 27, bw // 384 * 27))
            ratios.add(math.sqrt((bottom - top) * (right - left) / (9 * 27 * 27)))
    assert any(r <= 1 for r in ratios) and any(1 < r <= 1.1 for r in ratios) and any(r > 1.5 for r in ratios)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = _reference()
    path = tmp_path_factory.mktemp("onevision")
    ref.save_pretrained(path)
    return ref, ocellus.load(path), path


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


PROC = ImageProcessorConfig(size_hw=(TILE, TILE), image_grid_pinpoints=tuple(map(tuple, PINPOINTS)))


def _batch(ours, sizes=SIZES, T=20):
    """One image a row (OneVision's patched path), left padded, the image block at a different place each row."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for b, size in enumerate(sizes):
        row = torch.randint(1, 99, (T,), generator=g).tolist()
        row[2 + b:2 + b] = [IMG] * ours.packer.num_tokens(size)
        rows.append(row)
    return padded(rows)


def test_logits_equal_transformers(pair):
    ref, ours, _ = pair
    assert type(ours).__name__ == "LlavaOnevision" and ours.packer.max_patches == MAX
    pixel_values, image_sizes = preprocess_anyres(_images(), PROC)                  # [5, 10, 3, 32, 32], [5, 2]
    ids, mask = _batch(ours)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=pixel_values, image_sizes=image_sizes)
    with torch.no_grad():
        a, b = ref(**kw).logits, ours(**kw).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_a_config_leaving_fields_to_the_class_defaults(pair, tmp_path):
    """transformers' LlavaOnevisionConfig fills what config.json leaves out ('full' features of the last layer, a
    SigLIP tower, Qwen2 text); the reference used those values, so the sparse file gives its logits too."""
    import shutil
    ref, _, src = pair
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("vision_feature_select_strategy", "vision_feature_layer"):
        del cfg[key]
    del cfg["vision_config"]["model_type"], cfg["text_config"]["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sparse = ocellus.load(tmp_path)
    pixel_values, image_sizes = preprocess_anyres(_images()[:2], PROC)
    ids, mask = _batch(sparse, SIZES[:2])
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=image_sizes,
              position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        torch.testing.assert_close(sparse(**kw).logits[mask.bool()], ref(**kw).logits[mask.bool()], atol=1e-5,
                                   rtol=1e-5)


def test_generate_equals_transformers_and_save_reopens(pair, tmp_path):
    import transformers
    ref, ours, src = pair
    pixel_values, image_sizes = preprocess_anyres(_images()[1:3], PROC)
    ids, mask = _batch(ours, SIZES[1:3])
    kw = dict(attention_mask=mask, pixel_values=pixel_values, image_sizes=image_sizes)
    want = ref.generate(input_ids=ids, max_new_tokens=10, do_sample=False, **kw)
    assert torch.equal(ours.generate(ids, max_new_tokens=10, **kw), want)
    ocellus.save(ours, tmp_path)
    written, source = (json.loads((d / "config.json").read_text()) for d in (tmp_path, src))
    for key in ("architectures", "model_type", "vision_aspect_ratio", "image_grid_pinpoints",
                "vision_feature_select_strategy", "vision_feature_layer"):
        assert written[key] == source[key], key
    again = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, **kw).logits, ours(input_ids=ids, **kw).logits,
                                   atol=1e-5, rtol=1e-5)


def test_videos_and_several_images_a_sample_are_refused_by_name(pair):
    _, ours, _ = pair
    ids, mask = _batch(ours, SIZES[:1])
    pixel_values, image_sizes = preprocess_anyres(_images()[:1], PROC)
    with pytest.raises(ConfigError, match="llava_onevision: video input is not implemented"):
        ours(input_ids=ids, pixel_values_videos=torch.zeros(1, 2, 3, TILE, TILE))
    with pytest.raises(ConfigError, match="llava_onevision: several images in one sample"):
        ours(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes, batch_num_images=torch.tensor([2]))


@pytest.mark.parametrize("ratio", ["anyres", "anyres_max_0", "max_9"])
def test_an_aspect_ratio_transformers_cannot_read_is_a_config_error(ratio):
    vision_cfg, tc = tiny_llava_towers("siglip", "qwen2")
    with pytest.raises(ConfigError, match="vision_aspect_ratio"):
        build_llava_onevision({"vision_config": vision_cfg.to_dict(), "text_config": tc, "vision_aspect_ratio": ratio})


def test_processor_and_logits_equal_transformers(tmp_path, monkeypatch):
    """LlavaOnevisionProcessor (its PIL image processor) on prompts of one image each, sizes under and over the
    cap: the same ids, pixels and image_sizes from ocellus.load_processor, and the same logits from the model."""
    import transformers as tf
    from test_processor_parity import _tokenizer
    tok = _tokenizer(tmp_path)
    ref = _reference(vocab=320, image_token=tok.convert_tokens_to_ids("<image>"))
    image_proc = tf.LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS)
    # its class check looks up the video processor, which needs torchvision (not installed): skip only that check
    monkeypatch.setattr(tf.LlavaOnevisionProcessor, "check_argument_for_proper_class", lambda self, name, arg: None)
    hf = tf.LlavaOnevisionProcessor(image_processor=image_proc, tokenizer=tok, num_image_tokens=SIDE * SIDE,
                                    vision_feature_select_strategy="full", vision_aspect_ratio=f"anyres_max_{MAX}")
    d = tmp_path / "ckpt"
    ref.save_pretrained(d)
    image_proc.save_pretrained(d)   # the processor's save_pretrained needs the video processor (torchvision)
    tok.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())   # left to the class default ('full'): counted as the model reads it
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "vision_feature_select_strategy"}))
    (d / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": SIDE * SIDE, "image_token": "<image>",
        "vision_feature_select_strategy": "full", "vision_aspect_ratio": f"anyres_max_{MAX}"}))
    text = ["<image>\nWhat is in the picture?", "Describe <image> the image in one sentence.",
            "<image> red circle", "A blue square <image>", "Compare <image> brighter"]
    expected = hf(images=_images(), text=text, return_tensors="pt", padding=True, padding_side="left")
    ours = ocellus.load_processor(d)
    got = ours(text=text, images=_images())
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    assert torch.equal(got["attention_mask"], expected["attention_mask"])
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], atol=0, rtol=0)
    assert torch.equal(got["image_sizes"], expected["image_sizes"].to(torch.int64))
    assert_logits_match_on_real_tokens(ocellus.load(d), ref, got, expected)
    with pytest.raises(ConfigError, match="llava_onevision: several images in one sample"):
        ours(text=["<image> and <image>"], images=_images()[:2])
    cfg = json.loads((d / "processor_config.json").read_text())
    (d / "processor_config.json").write_text(json.dumps({**cfg, "vision_aspect_ratio": "anyres_max_3"}))
    with pytest.raises(ConfigError, match="vision_aspect_ratio 'anyres_max_3'"):
        ocellus.load_processor(d)
    with pytest.raises(ConfigError, match="llava_onevision: video input"):
        ours(messages=[{"role": "user", "content": [{"type": "video", "video": "clip.gif"}]}])
