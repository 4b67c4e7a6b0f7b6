"""Parity: ocellus.data.image / image_tiling vs transformers 5.x image processors.

The oracle is transformers' Pillow backend (`*ImageProcessorPil`; the default classes need
torchvision, which is not installed, and fall back to these anyway). Images are generated here
(gradients + noise, many sizes and aspect ratios); processor configs are written with the
reference's save_pretrained and read back with ImageProcessorConfig.from_dir. Pixel values agree
bit for bit: both sides resize with Pillow on uint8 and do the same float64/float32 arithmetic.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessorPil,
    GotOcr2ImageProcessorPil,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
)
from transformers.image_processing_utils import select_best_resolution as ref_select_best_resolution  # noqa: E402
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas  # noqa: E402
from transformers.models.internvl.modeling_internvl import InternVLModel  # noqa: E402
from transformers.models.llava_next.modeling_llava_next import (  # noqa: E402
    get_anyres_image_grid_shape,
    unpad_image,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref_smart_resize  # noqa: E402

from ocellus.data.image import ImageProcessorConfig, preprocess  # noqa: E402
from ocellus.data.image_tiling import (  # noqa: E402
    anyres_num_tokens,
    internvl_candidate_grids,
    internvl_grid,
    internvl_num_tiles,
    internvl_num_tokens,
    preprocess_anyres,
    preprocess_internvl,
    preprocess_qwen2vl,
    qwen2vl_grid,
    qwen2vl_num_tokens,
    qwen2vl_patchify,
    select_best_resolution,
    smart_resize,
    tokens_per_image,
    unpad_features,
)
from ocellus.errors import InputError  # noqa: E402

# (H, W): square, landscape, portrait, tiny, odd, extreme aspect ratios
SIZES = [(224, 224), (300, 400), (517, 233), (13, 17), (50, 700), (641, 97), (128, 129)]
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
EXACT = dict(rtol=0, atol=1e-6)  # observed: bit-identical (max diff 0.0)


def make_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """Diagonal colour gradients plus noise, so resampling filters and crops are visible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + 2 * y) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8))


IMAGES = [make_image(h, w, i) for i, (h, w) in enumerate(SIZES)]


def cfg_of(processor, tmp_path) -> ImageProcessorConfig:
    processor.save_pretrained(tmp_path)
    return ImageProcessorConfig.from_dir(tmp_path)


def ref_pixels(processor, images, **kw) -> torch.Tensor:
    return processor(images, return_tensors="pt", **kw)["pixel_values"]


# ---------------------------------------------------------------- CLIP / SigLIP / LLaVA-1.5 pad

@pytest.mark.parametrize("kwargs,n_images", [
    ({}, 7),                                                                          # CLIP ViT-B/16: 224
    ({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}, 7),  # LLaVA-1.5's tower
    ({"size": {"shortest_edge": 230}, "crop_size": {"height": 224, "width": 200}, "resample": 2}, 3),
    ({"resample": 0}, 3), ({"resample": 1}, 3),                                       # nearest, lanczos
    ({"do_normalize": False}, 3), ({"do_rescale": False, "do_normalize": False}, 3),
])
def test_clip_preprocess_matches_transformers(kwargs, n_images, tmp_path):
    ref = CLIPImageProcessorPil(**kwargs)
    cfg = cfg_of(ref, tmp_path)
    images = IMAGES[:n_images]
    # with neither rescale nor normalize transformers hands back uint8; we always return float32
    torch.testing.assert_close(preprocess(images, cfg), ref_pixels(ref, images).float(), **EXACT)


def test_clip_without_crop_and_crop_padding_match(tmp_path):
    # shortest-edge resize with no crop: one image at a time (sizes differ)
    ref = CLIPImageProcessorPil(do_center_crop=False, size={"shortest_edge": 64})
    cfg = cfg_of(ref, tmp_path / "a")
    for img in IMAGES[:4]:
        torch.testing.assert_close(preprocess([img], cfg), ref_pixels(ref, [img]), **EXACT)
    # a crop bigger than the image: transformers zero-pads around it
    ref = CLIPImageProcessorPil(do_resize=False, crop_size={"height": 71, "width": 500})
    cfg = cfg_of(ref, tmp_path / "b")
    img = IMAGES[1]  # 300 x 400
    torch.testing.assert_close(preprocess([img], cfg), ref_pixels(ref, [img]), **EXACT)


def test_rgba_la_p_and_grey_images_match_transformers_conversion(tmp_path):
    """transformers' convert_to_rgb also composites transparency on white: same pixels out."""
    ref = CLIPImageProcessorPil()
    cfg = cfg_of(ref, tmp_path)
    rgba = np.dstack([np.asarray(IMAGES[1]), np.random.default_rng(3).integers(0, 256, (300, 400), dtype=np.uint8)])
    pal = IMAGES[2].convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 3
    images = [Image.fromarray(rgba, "RGBA"), Image.fromarray(rgba, "RGBA").convert("LA"), pal,
              IMAGES[3].convert("L"), IMAGES[4].convert("CMYK")]
    torch.testing.assert_close(preprocess(images, cfg), ref_pixels(ref, images), **EXACT)


def test_old_style_int_size_config(tmp_path):
    """openai/clip-vit-* checkpoints still ship `"size": 224, "crop_size": 224`."""
    import json
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "CLIPFeatureExtractor", "size": 224, "crop_size": 224,
        "do_resize": True, "do_center_crop": True, "do_normalize": True, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    ref = CLIPImageProcessorPil.from_pretrained(tmp_path)
    cfg = ImageProcessorConfig.from_dir(tmp_path)
    assert cfg.shortest_edge == 224 and cfg.crop_size == (224, 224)
    torch.testing.assert_close(preprocess(IMAGES, cfg), ref_pixels(ref, IMAGES), **EXACT)


@pytest.mark.parametrize("kwargs,n_images", [({}, 7), ({"size": {"height": 256, "width": 320}}, 3),
                                             ({"resample": 2}, 3)])
def test_siglip_preprocess_matches_transformers(kwargs, n_images, tmp_path):
    ref = SiglipImageProcessorPil(**kwargs)
    cfg = cfg_of(ref, tmp_path)
    assert cfg.size_hw is not None and not cfg.do_center_crop
    images = IMAGES[:n_images]
    torch.testing.assert_close(preprocess(images, cfg), ref_pixels(ref, images), **EXACT)


def llava_expand2square(pil_img, background_color):
    """LLaVA-1.5's published llava/mm_utils.py expand2square, verbatim in behaviour (the reference)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def test_llava15_pad_matches_reference(tmp_path):
    ref = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    cfg = cfg_of(ref, tmp_path)
    background = tuple(int(x * 255) for x in ref.image_mean)  # LLaVA: the mean colour, truncated
    padded = [llava_expand2square(img, background) for img in IMAGES]
    torch.testing.assert_close(preprocess(IMAGES, cfg, pad_to_square=True), ref_pixels(ref, padded), **EXACT)


# ---------------------------------------------------------------- LLaVA-NeXT anyres

@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000),
       pins=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=8, unique=True))
def test_select_best_resolution_matches_transformers(h, w, pins):
    candidates = [[336 * a, 336 * b] for a, b in pins]
    assert select_best_resolution((h, w), candidates) == tuple(ref_select_best_resolution((h, w), candidates))


def test_anyres_pixels_and_sizes_match_transformers(tmp_path):
    ref = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                     image_grid_pinpoints=PINPOINTS)
    cfg = cfg_of(ref, tmp_path)
    images = IMAGES[:5]
    out = ref(images, return_tensors="pt")
    pixel_values, image_sizes = preprocess_anyres(images, cfg)
    assert pixel_values.shape == out["pixel_values"].shape  # [N, V, 3, 336, 336], zero-padded views
    torch.testing.assert_close(pixel_values, out["pixel_values"], **EXACT)
    assert torch.equal(image_sizes, out["image_sizes"].to(torch.int64))


def _tiny_tokenizer():
    """A word-level tokenizer where "<image>" is id 1: enough for the processors to expand it."""
    raw = RawTokenizer(models.WordLevel({"<unk>": 0, "<image>": 1, "hi": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", additional_special_tokens=["<image>"])


def _llava_next_processor(feature_select: str, num_extra: int):
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                    image_grid_pinpoints=PINPOINTS)
    return LlavaNextProcessor(image_processor=ip, tokenizer=_tiny_tokenizer(), patch_size=14,
                              vision_feature_select_strategy=feature_select, num_additional_image_tokens=num_extra)


@pytest.mark.parametrize("feature_select,num_extra", [("default", 1), ("full", 1), ("full", 0)])
def test_anyres_token_count_matches_llava_next_processor(feature_select, num_extra):
    proc = _llava_next_processor(feature_select, num_extra)
    kw = dict(tile_size=336, patch_size=14, feature_select=feature_select, num_extra_tokens=num_extra)
    # the full processor call on real pixels: count the expanded placeholders
    for img in IMAGES[:3]:
        ids = proc(images=[img], text=["hi <image> hi"], return_tensors="pt")["input_ids"]
        assert int((ids == 1).sum()) == anyres_num_tokens((img.height, img.width), PINPOINTS, **kw)
    # the processor's size-only count on many sizes
    sizes = [(h, w) for h in (1, 7, 100, 335, 336, 337, 500, 672, 1000, 2001) for w in (1, 9, 150, 336, 673, 999, 4000)]
    ref = proc._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens
    assert [tokens_per_image("anyres", image_size=s, grid_pinpoints=PINPOINTS, **kw) for s in sizes] == ref


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 4000), w=st.integers(1, 4000))
def test_anyres_unpad_matches_llava_next_model(h, w):
    """The model side: transformers' grid shape + unpad_image on a feature map, counted as the model
    packs it (base patches, then rows x (cols + newline))."""
    side = 336 // 14
    gh, gw = get_anyres_image_grid_shape((h, w), PINPOINTS, 336)
    feats = torch.zeros(1, gh * side, gw * side)  # [D, rows, cols]
    ref = unpad_image(feats, (h, w))
    ours = unpad_features(feats, (h, w))
    assert ours.shape == ref.shape
    model_count = side * side + ref.shape[1] * (ref.shape[2] + 1)
    assert anyres_num_tokens((h, w), PINPOINTS, tile_size=336, patch_size=14) == model_count


# ---------------------------------------------------------------- InternVL-1.5 dynamic tiling

@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 5000), w=st.integers(1, 5000), lo=st.integers(1, 4), hi=st.integers(1, 16))
def test_internvl_grid_matches_transformers(h, w, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    assert internvl_grid((h, w), min_tiles=lo, max_tiles=hi) == get_optimal_tiled_canvas((h, w), (448, 448), lo, hi)


@pytest.mark.parametrize("h,w", [(448, 448), (448, 896), (1000, 250), (30, 3000), (2000, 1500), (100, 120),
                                 (800, 1100), (5, 5)])
@pytest.mark.parametrize("lo,hi", [(1, 12), (1, 6), (2, 4), (1, 1)])
def test_internvl_grid_properties(h, w, lo, hi):
    """The paper's rule stated directly: tile count within bounds, aspect ratio nearest the image's."""
    cols, rows = internvl_grid((h, w), min_tiles=lo, max_tiles=hi)
    assert lo <= cols * rows <= hi
    best = min(abs(w / h - c / r) for c, r in internvl_candidate_grids(lo, hi))
    assert abs(w / h - cols / rows) == best
    n = internvl_num_tiles((h, w), min_tiles=lo, max_tiles=hi)
    assert n == cols * rows + (1 if cols * rows > 1 else 0)


def test_internvl_tiles_match_gotocr2_processor(tmp_path):
    ref = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
                                   max_patches=6, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    cfg = cfg_of(ref, tmp_path)
    images = [make_image(h, w, 9) for h, w in [(448, 896), (300, 400), (1000, 150), (120, 100)]]
    out = ref(images, return_tensors="pt")
    pixel_values, num_tiles = preprocess_internvl(images, cfg)
    assert num_tiles == list(out["num_patches"])
    assert num_tiles == [internvl_num_tiles((i.height, i.width), max_tiles=6) for i in images]
    torch.testing.assert_close(pixel_values, out["pixel_values"], **EXACT)


def test_internvl_tokens_match_pixel_shuffle():
    """256 tokens per 448 tile: the ViT's 32x32 patch grid after InternVL's pixel shuffle at 0.5."""
    feats = torch.zeros(1, 448 // 14, 448 // 14, 8)  # [B, W, H, C] as InternVL's vision output
    shuffled = InternVLModel.pixel_shuffle(None, feats, scale_factor=0.5)
    per_tile = shuffled.shape[1] * shuffled.shape[2]
    assert internvl_num_tokens(7) == 7 * per_tile == tokens_per_image("internvl", num_tiles=7)


# ---------------------------------------------------------------- Qwen2-VL

@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 20000), w=st.integers(1, 20000), factor=st.sampled_from([28, 32, 14]),
       lo=st.sampled_from([56 * 56, 4 * 28 * 28, 256 * 28 * 28]),
       hi=st.sampled_from([28 * 28 * 1280, 14 * 14 * 4 * 16384, 512 * 28 * 28]))
def test_smart_resize_matches_transformers(h, w, factor, lo, hi):
    try:
        ref = ref_smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
    except ValueError:
        with pytest.raises(InputError, match="aspect ratio"):
            smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
        return
    assert smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi) == ref


@pytest.mark.parametrize("kwargs", [{}, {"min_pixels": 128 * 28 * 28, "max_pixels": 256 * 28 * 28}])
def test_qwen2vl_pixels_and_grid_match_transformers(kwargs, tmp_path):
    ref = Qwen2VLImageProcessorPil(**kwargs)
    cfg = cfg_of(ref, tmp_path)
    images = IMAGES[:4]
    out = ref(images, return_tensors="pt")
    pixel_values, grid_thw = preprocess_qwen2vl(images, cfg)
    assert torch.equal(grid_thw, out["image_grid_thw"])
    torch.testing.assert_close(pixel_values, out["pixel_values"], **EXACT)
    lo, hi = ref.size["shortest_edge"], ref.size["longest_edge"]
    for img, thw in zip(images, grid_thw.tolist()):
        assert qwen2vl_grid((img.height, img.width), min_pixels=lo, max_pixels=hi) == tuple(thw)
        n_patches = ref.get_number_of_image_patches(img.height, img.width, {"min_pixels": lo, "max_pixels": hi})
        assert tokens_per_image("qwen2vl", grid_thw=thw) == qwen2vl_num_tokens(thw) == n_patches // 4


def test_qwen2vl_patchify_matches_transformers():
    ref = Qwen2VLImageProcessorPil()
    x = torch.randn(3, 56 * 3, 28 * 5)  # [C, H, W], already normalised
    ref_patches, gh, gw = ref.patchify(x.numpy(), patch_size=14, merge_size=2, temporal_patch_size=2)
    patches, thw = qwen2vl_patchify(x)
    assert thw == (1, gh, gw)
    torch.testing.assert_close(patches, torch.from_numpy(np.ascontiguousarray(ref_patches)), rtol=0, atol=0)


# ---------------------------------------------------------------- CLIP token count (LLaVA-1.5)

@pytest.mark.parametrize("feature_select,num_extra", [("default", 1), ("full", 1), ("full", 0), ("default", 0)])
def test_clip_tokens_match_llava_processor(feature_select, num_extra):
    """transformers' LlavaProcessor expands <image> into as many tokens as the model will splice."""
    from transformers import LlavaProcessor
    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    proc = LlavaProcessor(image_processor=ip, tokenizer=_tiny_tokenizer(), patch_size=14,
                          vision_feature_select_strategy=feature_select, num_additional_image_tokens=num_extra)
    ids = proc(images=[IMAGES[1]], text=["hi <image> hi"], return_tensors="pt")["input_ids"]
    assert int((ids == 1).sum()) == tokens_per_image("clip", image_size=336, patch_size=14,
                                                     feature_select=feature_select, num_extra_tokens=num_extra)
