"""ocellus.data.image / image_tiling on bad and unusual input: every refusal is an InputError or
ConfigError whose message names the image (path or index) and the problem; every accepted mode
comes out as the documented RGB. Images are made here with Pillow; no transformers needed."""
import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ocellus.data.image import (
    ImageProcessorConfig,
    center_crop,
    expand2square,
    load_image,
    load_images,
    mean_color,
    preprocess,
)
from ocellus.data.image_tiling import (
    anyres_num_tokens,
    internvl_grid,
    preprocess_anyres,
    qwen2vl_patchify,
    select_best_resolution,
    smart_resize,
    tokens_per_image,
)
from ocellus.errors import ConfigError, InputError


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR declaring width x height and no pixel data at all: opening it costs
    nothing, decoding it would fail -- so a size refusal proves the check runs before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))


# ---------------------------------------------------------------- sources

def test_path_bytes_pil_and_data_url_give_the_same_pixels(tmp_path):
    path = tmp_path / "a.png"
    NOISE.save(path)
    data = encode(NOISE)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    for src in (path, str(path), data, bytearray(data), memoryview(data), NOISE, url):
        np.testing.assert_array_equal(rgb(load_image(src)), np.asarray(NOISE))


def test_missing_file_directory_and_wrong_type(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png.*no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="image 0.*got int"):
        load_images([3])
    with pytest.raises(InputError, match="base64"):
        load_image("data:image/png;base64,!!!not-base64!!!")
    with pytest.raises(InputError, match="not fetched"):
        load_image("https://example.com/cat.png")


def test_truncated_png_is_refused_with_its_name(tmp_path):
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    cut = data[: len(data) // 2]
    with pytest.raises(InputError, match=r"image 1: .*truncated or corrupt"):
        load_images([data, cut])
    path = tmp_path / "cut.png"
    path.write_bytes(cut)
    with pytest.raises(InputError, match=r"cut\.png"):
        load_image(path)
    with pytest.raises(InputError, match="not an image"):
        load_image(b"definitely not an image")


def test_empty_images_are_refused():
    for size in [(0, 0), (0, 5), (7, 0)]:
        with pytest.raises(InputError, match=r"image 0: the image is empty"):
            load_images([Image.new("RGB", size)])
    with pytest.raises(InputError, match="image"):  # Pillow cannot even identify a 0-wide PNG
        load_image(png_header_only(0, 5))


# ---------------------------------------------------------------- decompression bombs

def test_bomb_refused_from_the_header():
    # 100000 x 100000 declared, 50 bytes on disk; nothing is allocated
    with pytest.raises(InputError, match=r"image 0: .*(decompression bomb|max_pixels)"):
        load_images([png_header_only(100_000, 100_000)])


def test_pixel_limit_is_configurable_and_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(5000, 4000))
    with pytest.raises(InputError, match=r"big\.png.*5000x4000 = 20,000,000 pixels.*max_pixels=1,000,000"):
        load_image(path, max_pixels=1_000_000)
    with pytest.raises(InputError, match="truncated or corrupt"):  # under the limit: decoding is tried, and fails
        load_image(path, max_pixels=None)
    with pytest.raises(InputError, match="max_pixels=100"):  # already-decoded PIL images are checked too
        load_image(NOISE, max_pixels=100)
    assert load_image(NOISE, max_pixels=600).size == (30, 20)


# ---------------------------------------------------------------- modes

def test_rgba_is_composited_on_white():
    a = np.zeros((2, 3, 4), dtype=np.uint8)
    a[0, 0] = (255, 0, 0, 0)      # invisible red -> white
    a[0, 1] = (255, 0, 0, 255)    # opaque red -> red
    a[0, 2] = (0, 0, 0, 128)      # half-transparent black -> mid grey
    out = rgb(load_image(encode(Image.fromarray(a, "RGBA"))))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (255, 0, 0)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


def test_la_p_and_transparent_p():
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), "LA")
    assert rgb(load_image(la))[0].tolist() == [[255, 255, 255], [10, 10, 10]]
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    p.putpixel((0, 0), 1)
    assert rgb(load_image(encode(p)))[0].tolist() == [[200, 30, 40], [0, 0, 0]]
    p.info["transparency"] = 1  # palette entry 1 is transparent -> white
    assert rgb(load_image(encode(p, transparency=1)))[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_cmyk_and_grey_convert_like_pillow():
    cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
    assert tuple(rgb(load_image(encode(cmyk, "JPEG", quality=100)))[1, 1]) == pytest.approx((255, 0, 0), abs=3)
    np.testing.assert_array_equal(rgb(load_image(cmyk)), np.asarray(cmyk.convert("RGB")))
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, "L")
    np.testing.assert_array_equal(rgb(load_image(grey))[..., 1], np.asarray(grey))


def test_16_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 257, 30000, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(values)
    assert img16.mode == "I;16"
    out = rgb(load_image(encode(img16)))  # through a real 16-bit PNG
    assert out[0, :, 0].tolist() == [0, 1, round(30000 / 257), 255]
    assert (out[..., 0] == out[..., 2]).all()
    i32 = Image.fromarray(values.astype(np.int32))  # mode I holding 16-bit data
    assert rgb(load_image(i32))[0, :, 0].tolist() == [0, 1, 117, 255]
    with pytest.raises(InputError, match=r"image 0: mode I .*not 16-bit"):
        load_images([Image.fromarray(np.array([[-5, 70000]], dtype=np.int32))])
    with pytest.raises(InputError, match="mode F"):
        load_image(Image.fromarray(np.zeros((2, 2), dtype=np.float32)))


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as probe:
        assert probe.n_frames == 3
    out = rgb(load_image(path))
    assert out.shape == (6, 8, 3) and tuple(out[0, 0]) == (255, 0, 0)
    with Image.open(path) as opened:  # a PIL image the caller moved to frame 2 keeps that frame
        opened.seek(2)
        assert tuple(rgb(load_image(opened))[3, 3]) == (0, 255, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = encode(Image.new("RGB", (40, 20), (0, 128, 0)), "JPEG", exif=exif)
    assert load_image(data).size == (20, 40)


# ---------------------------------------------------------------- config

def test_config_from_dict_and_errors(tmp_path):
    cfg = ImageProcessorConfig.from_dict({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
                                          "do_center_crop": True, "image_mean": 0.5, "image_std": [0.5] * 3})
    assert cfg.shortest_edge == 336 and cfg.crop_size == (336, 336) and cfg.image_mean == (0.5, 0.5, 0.5)
    q = ImageProcessorConfig.from_dict({"image_processor_type": "Qwen2VLImageProcessor",
                                        "size": {"shortest_edge": 3136, "longest_edge": 100352}})
    assert (q.min_pixels, q.max_pixels) == (3136, 100352)
    with pytest.raises(ConfigError, match="unsupported size"):
        ImageProcessorConfig.from_dict({"size": {"shortest_edge": 3, "longest_edge": 9}})
    with pytest.raises(ConfigError, match="no `size`"):
        ImageProcessorConfig.from_dict({})
    with pytest.raises(ConfigError, match="crop_size is missing"):
        ImageProcessorConfig.from_dict({"size": 224, "do_center_crop": True})
    with pytest.raises(ConfigError, match="image_std has a zero"):
        ImageProcessorConfig.from_dict({"size": 224, "image_std": [0.5, 0, 0.5]})
    with pytest.raises(ConfigError, match="resample"):
        ImageProcessorConfig.from_dict({"size": 224, "resample": 9})
    with pytest.raises(ConfigError, match="no preprocessor_config.json"):
        ImageProcessorConfig.from_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        ImageProcessorConfig.from_dir(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 48}}))
    assert ImageProcessorConfig.from_dir(tmp_path).size_hw == (32, 48)


def test_preprocess_shapes_and_unbatchable_sizes():
    cfg = ImageProcessorConfig(size_hw=(32, 48))
    assert preprocess([NOISE, NOISE.rotate(90, expand=True)], cfg).shape == (2, 3, 32, 48)
    no_crop = ImageProcessorConfig(shortest_edge=16)
    with pytest.raises(InputError, match="different shapes"):
        preprocess([NOISE, NOISE.rotate(90, expand=True)], no_crop)
    with pytest.raises(InputError, match="image 1"):
        preprocess([NOISE, b"junk"], cfg)


def test_center_crop_and_expand2square():
    x = torch.arange(5 * 7).reshape(1, 5, 7)
    assert center_crop(x, (3, 3)).tolist() == x[:, 1:4, 2:5].tolist()
    padded = center_crop(x, (7, 7))  # taller than the image: zero rows, ceil on top
    assert padded.shape == (1, 7, 7) and padded[0, 0].sum() == 0 and padded[0, 6].sum() == 0
    assert torch.equal(padded[:, 1:6], x)
    sq = expand2square(NOISE, mean_color(ImageProcessorConfig(size_hw=(8, 8))))
    assert sq.size == (30, 30) and sq.getpixel((0, 0)) == (122, 116, 104)  # int(mean * 255), as LLaVA
    np.testing.assert_array_equal(np.asarray(sq)[5:25], np.asarray(NOISE))  # (30 - 20) // 2 = 5 rows on top


# ---------------------------------------------------------------- tiling helpers

def test_select_best_resolution_and_anyres_shapes():
    pins = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    assert select_best_resolution((300, 600), pins) == (336, 672)  # all fit it whole: least waste
    assert select_best_resolution((300, 700), pins) == (336, 1008)  # only 336x1008 keeps every pixel
    assert select_best_resolution((1000, 200), pins) == (1008, 336)
    cfg = ImageProcessorConfig(shortest_edge=336, do_center_crop=True, crop_size=(336, 336), image_grid_pinpoints=pins)
    pv, sizes = preprocess_anyres([NOISE, Image.new("RGB", (50, 700))], cfg)
    assert pv.shape == (2, 4, 3, 336, 336) and sizes.tolist() == [[20, 30], [700, 50]]
    assert pv[0, 3].abs().sum() == 0  # the first image has 3 views; the 4th is batch padding
    with pytest.raises(ConfigError, match="image_grid_pinpoints"):
        preprocess_anyres([NOISE], ImageProcessorConfig(shortest_edge=336))
    with pytest.raises(ConfigError, match=r"not multiples of the tile size 224"):
        anyres_num_tokens((10, 10), pins, tile_size=224, patch_size=14)


def test_internvl_grid_table():
    # (H, W) -> (cols, rows) with 1..12 tiles
    table = {(448, 448): (1, 1), (448, 896): (2, 1), (896, 448): (1, 2), (1000, 250): (1, 4),
             (300, 3000): (10, 1), (600, 800): (4, 3), (2000, 1500): (3, 4)}
    for size, grid in table.items():
        assert internvl_grid(size) == grid, size
    with pytest.raises(ConfigError, match="min_tiles"):
        internvl_grid((10, 10), min_tiles=5, max_tiles=2)


def test_smart_resize_limits_and_refusals():
    for h, w in [(1, 1), (28, 28), (1080, 1920), (4000, 30), (20000, 20000)]:
        rh, rw = smart_resize(h, w)
        assert rh % 28 == 0 and rw % 28 == 0 and 56 * 56 <= rh * rw <= 28 * 28 * 1280
    with pytest.raises(InputError, match="aspect ratio .* over Qwen2-VL's limit of 200"):
        smart_resize(10, 2500)
    with pytest.raises(InputError, match="empty"):
        smart_resize(0, 10)


def test_qwen2vl_patchify_shapes_and_errors():
    x = torch.randn(3, 56, 84)
    patches, thw = qwen2vl_patchify(x)
    assert thw == (1, 4, 6) and patches.shape == (24, 3 * 2 * 14 * 14)
    # the temporal copies are identical for a still image: row = (C, T, p, p)
    rows = patches.view(24, 3, 2, 14, 14)
    assert torch.equal(rows[:, :, 0], rows[:, :, 1])
    # the first row is the top-left 14x14 patch, the second its right neighbour (merge order)
    assert torch.equal(rows[0, :, 0], x[:, :14, :14]) and torch.equal(rows[1, :, 0], x[:, :14, 14:28])
    assert torch.equal(rows[2, :, 0], x[:, 14:28, :14])
    frames, thw = qwen2vl_patchify(torch.randn(3, 3, 56, 56))  # 3 frames -> padded to 4, t = 2
    assert thw == (2, 4, 4) and frames.shape == (32, 1176)
    with pytest.raises(InputError, match="multiple of patch_size"):
        qwen2vl_patchify(torch.randn(3, 50, 56))


def test_tokens_per_image_api():
    assert tokens_per_image("clip", image_size=336, patch_size=14) == 576
    assert tokens_per_image("clip", image_size=336, patch_size=14, feature_select="full") == 577
    assert tokens_per_image("clip", image_size=(384, 384), patch_size=14, feature_select="full",
                            num_extra_tokens=0) == 729  # SigLIP-so400m: no CLS
    assert tokens_per_image("qwen2vl", grid_thw=(1, 4, 6)) == 6
    assert tokens_per_image("internvl", num_tiles=7) == 7 * 256
    pins = [[336, 672], [672, 336], [672, 672]]
    # 672x672 square image on the 2x2 canvas: 24*24 global + 48 rows x (48 cols + newline)
    assert tokens_per_image("anyres", image_size=(672, 672), grid_pinpoints=pins, tile_size=336,
                            patch_size=14) == 576 + 48 * 49
    assert anyres_num_tokens((672, 672), pins, tile_size=336, patch_size=14, image_newline=False) == 576 + 48 * 48
    with pytest.raises(ConfigError, match="unknown strategy"):
        tokens_per_image("perceiver", num_tiles=1)
    with pytest.raises(ConfigError, match=r"tokens_per_image\('qwen2vl'\).*grid_thw"):
        tokens_per_image("qwen2vl", image_size=(10, 10))
    with pytest.raises(ConfigError, match="vision_feature_select_strategy"):
        tokens_per_image("clip", image_size=336, patch_size=14, feature_select="cls")
