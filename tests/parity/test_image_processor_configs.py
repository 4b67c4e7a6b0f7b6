"""Parity on preprocessor_config.json files as hub checkpoints ship them, not as save_pretrained writes them.

A hub config often leaves keys out (or sets them to null): transformers then takes its processor class's own
default (CLIP crops to 224, SigLIP normalises with 0.5, BLIP reads `"size": 384` as a square, GotOcr2 tiles
at 384, LLaVA-NeXT has five default canvases). Each config below is one that a fuzz over random configs and
images (CLIP, LLaVA, LLaVA-NeXT, SigLIP, BLIP, Qwen2-VL, GotOcr2 / InternVL) found read differently by Ocellus;
the oracle is AutoImageProcessor.from_pretrained on the same file (the Pillow backend: torchvision is not
installed, so transformers falls back to it), and the pixels agree bit for bit. The same fuzz found the
processor-level cases at the end: anyres views of another size than the tower's, Qwen2-VL's do_resize, images
whose resize or square pad is absurdly large.

What is compared only loosely, and why: nothing here. The known deviations stay where they are documented --
16-bit grey is scaled to 8 bits where transformers' convert("RGB") clips (data/image.py), and Ocellus always
converts to RGB, so `do_convert_rgb: false` changes nothing on an RGB image and on any other mode gives what
a 3-channel tower can read where transformers fails or hands back 1 or 4 channels. The torchvision backend
(the *Fast classes transformers picks when torchvision is installed) resizes with another kernel and is not
an oracle here: Ocellus matches the Pillow classes, which hub checkpoints were preprocessed with.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

import ocellus  # noqa: E402
import ocellus.data.image as image_module  # noqa: E402
from ocellus.data.bpe import train_bpe  # noqa: E402
from ocellus.data.image import ImageProcessorConfig, preprocess  # noqa: E402
from ocellus.data.image_tiling import preprocess_anyres, preprocess_internvl, preprocess_qwen2vl  # noqa: E402
from ocellus.data.processor import Processor  # noqa: E402
from ocellus.errors import ConfigError, InputError  # noqa: E402


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


IMAGES = [_image(37, 53, 1), _image(90, 31, 2), _image(1, 1, 3)]


def _ours(kind: str, cfg, images):
    """Ocellus' output for the processor class `kind`, under transformers' output keys."""
    if kind == "LlavaNextImageProcessor":
        pixel_values, sizes = preprocess_anyres(images, cfg)
        return {"pixel_values": pixel_values, "image_sizes": sizes}
    if kind == "Qwen2VLImageProcessor":
        pixel_values, grid = preprocess_qwen2vl(images, cfg)
        return {"pixel_values": pixel_values, "image_grid_thw": grid}
    if kind.startswith("GotOcr2"):
        pixel_values, tiles = preprocess_internvl(images, cfg)
        return {"pixel_values": pixel_values, "num_patches": torch.tensor(tiles)}
    return {"pixel_values": preprocess(images, cfg)}


SPARSE = {  # name: preprocessor_config.json as a hub checkpoint might ship it
    # CLIP's class crops to 224 when the file names no crop
    "clip-no-crop-keys": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 240}},
    # SigLIP's mean / std are 0.5, not CLIP's
    "siglip-no-mean-std": {"image_processor_type": "SiglipImageProcessor", "size": {"height": 48, "width": 40}},
    # BLIP's class reads a bare int size as a square (default_to_square), CLIP's as the shortest edge
    "blip-int-size": {"image_processor_type": "BlipImageProcessor", "size": 40},
    # null is not "absent": transformers keeps it, so a null switch is off (no crop here, no normalisation)
    "clip-null-switches": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 64},
                           "crop_size": None, "do_center_crop": None, "do_normalize": None, "image_mean": None},
    # the Fast class name (transformers 5 falls back to the Pillow class); tile size 384 by default
    "gotocr2-fast-no-size": {"image_processor_type": "GotOcr2ImageProcessorFast", "crop_to_patches": True,
                             "max_patches": 3},
    # LLaVA-NeXT: the default canvases, and its class's center crop
    "llava-next-defaults": {"image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": 336},
                            "crop_size": {"height": 336, "width": 336}},
    # a Qwen2-VL file with nothing but the type: the class's pixel budget and patch sizes
    "qwen2vl-bare": {"image_processor_type": "Qwen2VLImageProcessor"},
    # the size as a [height, width] list
    "siglip-list-size": {"image_processor_type": "SiglipImageProcessor", "size": [30, 50]},
}


@pytest.mark.parametrize("name", list(SPARSE))
def test_sparse_config_reads_like_transformers(name, tmp_path):
    config = SPARSE[name]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    ref = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    cfg = ImageProcessorConfig.from_dir(tmp_path)
    kind = config["image_processor_type"]
    for img in IMAGES:   # one at a time: without a crop the shapes differ between images
        expected = ref([img], return_tensors="pt")
        got = _ours(kind, cfg, [img])
        for key, value in got.items():
            torch.testing.assert_close(value, torch.as_tensor(expected[key]).to(value.dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("key,switch", [("image_mean", "do_normalize"), ("rescale_factor", "do_rescale"),
                                        ("resample", "do_resize")])
def test_a_null_number_its_switch_needs_is_refused_as_transformers_does(key, switch, tmp_path):
    config = {"image_processor_type": "SiglipImageProcessor", key: None}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=key):
        transformers.AutoImageProcessor.from_pretrained(tmp_path)(IMAGES[:1])
    with pytest.raises(ConfigError, match=f"{key} is null but {switch} is on"):
        ImageProcessorConfig.from_dir(tmp_path)


def test_resize_to_an_absurd_size_is_an_input_error_naming_the_image(monkeypatch):
    """A 1 x 40000 strip (40,000 pixels: the load guard lets it through) resized to a shortest edge of 224 would be
    224 x 8,960,000 pixels (6 GB of RGB), padded to a square (LLaVA-1.5) 1.6 G pixels: refused before Pillow
    allocates it, naming the image. The limit is the load guard's; lowered here (and the strip shortened to
    1 x 2000) so that a mutant that lets it through allocates 300 MB, not 6 GB."""
    monkeypatch.setattr(image_module, "DEFAULT_MAX_PIXELS", 1_000_000)
    cfg = ImageProcessorConfig.from_dict({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224},
                                          "do_center_crop": True, "crop_size": 224})
    strip = _image(1, 2000)
    with pytest.raises(InputError, match=r"image 1: resizing it would make it 224x448000"):
        preprocess([_image(20, 20), strip], cfg, max_pixels=None)
    with pytest.raises(InputError, match=r"image 0: padding it to a square would make it 2000x2000"):
        preprocess([strip], cfg, pad_to_square=True, max_pixels=None)


SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")
ANYRES = {"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": [[24, 48], [24, 24]],
          "crop_size": {"height": 24, "width": 24}, "do_center_crop": False}


def test_anyres_views_of_different_sizes_are_a_config_error():
    """No resize: the global view keeps `size`, the tiles the crop size -- a batch of views cannot hold both (it
    was a RuntimeError from torch.stack)."""
    cfg = ImageProcessorConfig.from_dict({**ANYRES, "do_resize": False, "size": {"shortest_edge": 16}})
    with pytest.raises(ConfigError, match="every view must be one size"):
        preprocess_anyres(IMAGES[:1], cfg)


def test_anyres_views_must_be_the_towers_size():
    """Views resized to 20 for a tower of 24: transformers' LlavaNextProcessor counts 20-pixel views while the
    model packs 24-pixel ones, so the prompt and the features disagree; the processor refuses when it is built."""
    tok = train_bpe(["a red circle"] * 5, 280, special_tokens=SPECIALS, image_token="<image>")
    cfg = ImageProcessorConfig.from_dict({**ANYRES, "size": {"shortest_edge": 20}})
    with pytest.raises(ConfigError, match="makes 20x20 views but the vision tower takes 24x24"):
        Processor(tok, cfg, patch_size=4, grid_pinpoints=cfg.image_grid_pinpoints, tile_size=24)
    for fits in ({"size": {"shortest_edge": 24}}, {"size": {"shortest_edge": 20}, "do_center_crop": True}):
        fits = ImageProcessorConfig.from_dict({**ANYRES, **fits})   # resized to 24, or cropped (padded) to 24
        Processor(tok, fits, patch_size=4, grid_pinpoints=cfg.image_grid_pinpoints, tile_size=24)


def test_qwen2vl_processor_honours_do_resize_false(tmp_path):
    """Qwen2-VL's processor forced do_resize on: a 64x96 image (a multiple of patch 8 x merge 2, over the
    2304-pixel budget) was smart-resized where transformers keeps it as it is."""
    fixture = Path(__file__).resolve().parent / "fixtures" / "qwen2_vl_video"
    shutil.copytree(fixture, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "do_resize": False}))
    ref = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ckpt")
    image = _image(64, 96)
    expected = ref([image], return_tensors="pt")
    got, counts = ocellus.load_processor(tmp_path / "ckpt").image_inputs([image])
    assert got["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist() == [[1, 8, 12]]
    assert counts == [8 * 12 // 4]
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-6)


def _internvl_dir(path: Path, preprocessor: dict) -> Path:
    """An InternVL checkpoint's processor side: config.json (a 28-pixel tower, patch 7), tokenizer, image config."""
    path.mkdir()
    tok = train_bpe(["describe the picture please"] * 5, 280, special_tokens=SPECIALS[:3] + ("<IMG_CONTEXT>",),
                    image_token="<IMG_CONTEXT>")
    tok.save(path)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=28,
                  patch_size=7)
    text = dict(model_type="qwen2", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2)
    transformers.InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=0.5,
                                image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>")).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return path


def test_internvl_tiles_must_be_the_towers_size(tmp_path):
    """A GotOcr2 file that names no size tiles at the class's 384 (or names another size than the tower's): each
    tile would give another number of tokens than config.json's tower counts, so the processor refuses it when
    it is built, naming both sizes; tiles of the tower's size are accepted."""
    got_ocr2 = {"image_processor_type": "GotOcr2ImageProcessorFast", "crop_to_patches": False, "max_patches": 4}
    with pytest.raises(ConfigError, match=r"tiles of 384x384 pixels but the vision tower.s image_size is 28"):
        ocellus.load_processor(_internvl_dir(tmp_path / "default", got_ocr2))
    proc = ocellus.load_processor(_internvl_dir(tmp_path / "fits", {**got_ocr2, "size": {"height": 28, "width": 28}}))
    assert proc.image_inputs([_image(28, 56)])[1] == [3 * 4]   # 2 tiles + thumbnail, 4 tokens each
