"""LLaVA-NeXT (AnyRes): logits equal transformers' LlavaNextForConditionalGeneration on tiny random
checkpoints, with images of different aspect ratios in one batch (different view counts, so views
are zero-padded; grids unpadded on different sides), preprocessed by ocellus' preprocess_anyres;
greedy generation with images equals transformers' generate; ocellus.save reopens in transformers;
token-count mismatches are InputErrors that name the sample or image."""
import numpy as np
import pytest
import torch
from PIL import Image

import ocellus
from ocellus.data.image import ImageProcessorConfig
from ocellus.data.image_tiling import preprocess_anyres, tokens_per_image
from ocellus.errors import ConfigError, InputError
from _init import padded, shift_biases_and_norms, spread_init, tiny_llava_towers

IMG = 100
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
# (H, W): wide -> 1x2 tiles, rows unpadded; square -> 2x2 tiles; tall -> 2x1 tiles, cols unpadded
SIZES = [(30, 100), (70, 70), (100, 36)]


def _reference(vision="clip", layer=-2, select="default", text="llama", tie=False):
    import transformers as tf
    vision_cfg, tc = tiny_llava_towers(vision, text, tie, max_positions=512)
    cfg = tf.LlavaNextConfig(vision_config=vision_cfg, text_config=tc, image_token_index=IMG,
                             vision_feature_layer=layer, vision_feature_select_strategy=select,
                             image_grid_pinpoints=PINPOINTS, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = spread_init(tf.LlavaNextForConditionalGeneration(cfg).eval())   # attention far from uniform (_init.py)
    return shift_biases_and_norms(model)


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


PROC = ImageProcessorConfig(shortest_edge=32, crop_size=(32, 32), image_grid_pinpoints=tuple(map(tuple, PINPOINTS)))


def _counts(num_extra=1, select="default"):
    return [tokens_per_image("anyres", image_size=s, grid_pinpoints=PINPOINTS, tile_size=32, patch_size=8,
                             feature_select=select, num_extra_tokens=num_extra) for s in SIZES]


def _batch(counts, images_per_sample=(1, 2), T=24):
    """Left-padded ids with one <image> block per image, at a different place each time."""
    g = torch.Generator().manual_seed(0)
    rows, k = [], 0
    for n in images_per_sample:
        row = torch.randint(1, 99, (T,), generator=g).tolist()
        at = 2
        for _ in range(n):
            row[at:at] = [IMG] * counts[k]
            at += counts[k] + 3
            k += 1
        rows.append(row)
    return padded(rows)


@pytest.fixture(scope="module")
def pixels():
    pixel_values, image_sizes = preprocess_anyres(_images(), PROC)
    assert pixel_values.shape == (3, 5, 3, 32, 32)            # V = 5 (square: 1 + 2x2); others padded
    return pixel_values, image_sizes


def test_pixels_match_transformers_processor(pixels):
    from transformers import LlavaNextImageProcessorPil
    ref = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                     image_grid_pinpoints=PINPOINTS)
    out = ref(_images(), return_tensors="pt")
    torch.testing.assert_close(pixels[0], out["pixel_values"], rtol=0, atol=1e-6)
    assert torch.equal(pixels[1], out["image_sizes"].to(torch.int64))


CASES = [
    dict(vision="clip", layer=-2, select="default"),
    dict(vision="siglip", layer=[-3, -1], select="full", text="qwen2", tie=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['vision']}-{c['layer']}-{c['select']}")
def test_logits_equal_transformers(case, pixels, tmp_path):
    ref = _reference(**case)
    ref.save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    counts = _counts(num_extra=int(case["vision"] == "clip"), select=case["select"])
    ids, mask = _batch(counts)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    pixel_values, image_sizes = pixels
    with torch.no_grad():
        a = ref(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=mask,
                position_ids=pos).logits
        b = ours(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=mask,
                 position_ids=pos).logits
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)


def test_generate_with_images_equals_transformers_and_save_reopens(pixels, tmp_path):
    import transformers
    ref = _reference()
    ref.save_pretrained(tmp_path / "src")
    ours = ocellus.load(tmp_path / "src")
    pixel_values, image_sizes = pixels
    # one image per sample, left-padded batch: the wide image and the tall one (3 real views of 5 each)
    ids, mask = _batch([_counts()[0], _counts()[2]], images_per_sample=(1, 1))
    pv, sizes = pixel_values[[0, 2]], image_sizes[[0, 2]]
    expected = ref.generate(input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes,
                            max_new_tokens=12, do_sample=False)
    got = ours.generate(ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes, max_new_tokens=12)
    assert torch.equal(got, expected)

    ocellus.save(ours, tmp_path / "out")
    again = transformers.LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert again.config.image_grid_pinpoints == PINPOINTS
    ids, mask = _batch(_counts())
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = dict(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=mask, position_ids=pos)
    with torch.no_grad():
        torch.testing.assert_close(again(**kw).logits[mask.bool()], ours(**kw).logits[mask.bool()],
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.model.image_newline, ours.packer.image_newline, rtol=0, atol=0)
    # read by its config.json, the export is LLaVA-NeXT (not LLaVA) to transformers' Auto classes and to ocellus.load
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").model_type == "llava_next"
    assert torch.equal(ocellus.load(tmp_path / "out").packer.image_newline, ours.packer.image_newline)


def test_mismatches_are_input_errors(pixels, tmp_path):
    _reference().save_pretrained(tmp_path)
    ours = ocellus.load(tmp_path)
    pixel_values, image_sizes = pixels
    counts = _counts()
    ids, _ = _batch(counts)
    short = ids.clone()
    short[1, (short[1] == IMG).nonzero()[0]] = 5            # sample 1: one placeholder too few
    with pytest.raises(InputError, match="sample 1"):
        ours(input_ids=short, pixel_values=pixel_values, image_sizes=image_sizes)
    with pytest.raises(InputError, match="image_sizes"):
        ours(input_ids=ids, pixel_values=pixel_values)
    with pytest.raises(InputError, match="image 1 of size 700x700 needs 5 views"):
        sizes = image_sizes.clone()
        sizes[1] = 700
        ours(input_ids=ids, pixel_values=pixel_values[:, :3], image_sizes=sizes)
    with pytest.raises(InputError, match=r"got \(3, 32, 32\)"):
        ours(input_ids=ids, pixel_values=pixel_values[0, 0], image_sizes=image_sizes)
    # the model's packing agrees with the processor's count for every image
    assert [s.shape[0] for s in ours.packer(ours.image_features(ours.packer.select_views(pixel_values, image_sizes)),
                                             image_sizes)] == counts


def test_grid_needs_a_square_feature_map(tmp_path):
    ref = _reference(select="full")                          # CLIP + 'full' keeps CLS: 17 rows per view
    ref.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="features per view"):
        ocellus.load(tmp_path)
