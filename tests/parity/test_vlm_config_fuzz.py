"""VLM configs no other test names, against transformers (found by fuzzing each family's config space on tiny
random checkpoints): one representative fixed config per mismatch found, each red before its fix."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import ocellus
from _init import shift_biases_and_norms, spread_init, tiny_llava_towers

IMG = 100


def _llava(tmp_path, **kw):
    """A tiny transformers LLaVA (CLIP 32 px / patch 8, Qwen2 text) saved to tmp_path; kw: LlavaConfig fields."""
    import transformers as tf
    vision_cfg, tc = tiny_llava_towers("clip", "qwen2")
    tc.update(kw.pop("text", {}))
    cfg = tf.LlavaConfig(vision_config=vision_cfg, text_config=tc, image_token_index=IMG, **kw)
    torch.manual_seed(0)
    ref = shift_biases_and_norms(spread_init(tf.LlavaForConditionalGeneration(cfg).eval()))
    ref.save_pretrained(tmp_path)
    return ref


def _ids_and_pixels(per_image=16, size=32):
    g = torch.Generator().manual_seed(1)
    row = torch.randint(1, 99, (12,), generator=g).tolist()
    row[2:2] = [IMG] * per_image
    return torch.tensor([row]), torch.randn(1, 3, size, size, generator=g)


def _same_logits(ref, ours, **inputs):
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, ref(**inputs).logits, atol=1e-4, rtol=1e-4)


def _assert_qwen2_vl_image_logits(ref, path, grid):
    """One image of `grid` (t, h, w patches; image token 120 between vision start 122 / end 123): our load of
    `path` gives the logits of the transformers model `ref`."""
    t, h, w = grid
    grids = torch.tensor([grid])
    ids = torch.tensor([[5, 122] + [120] * (t * h * w // 4) + [123, 7]])
    pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=pixels, image_grid_thw=grids, mm_token_type_ids=(ids == 120).long())
        got = ocellus.load(path)(input_ids=ids, pixel_values=pixels, image_grid_thw=grids)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=1e-4)


def test_a_top_level_tie_over_an_explicit_text_config_false_ties(tmp_path):
    """transformers 5 saves LlavaConfig(tie_word_embeddings=True) with text_config.tie_word_embeddings false and
    no lm_head in the weights: the top-level flag ties. We read text_config's flag first and refused the
    checkpoint (lm_head missing)."""
    ref = _llava(tmp_path, tie_word_embeddings=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["tie_word_embeddings"] and cfg["text_config"]["tie_word_embeddings"] is False
    ids, pixels = _ids_and_pixels()
    _same_logits(ref, ocellus.load(tmp_path), input_ids=ids, pixel_values=pixels)


def test_a_separate_head_under_a_tying_config_is_kept_apart(tmp_path):
    """A config that ties lm_head to the embeddings over a checkpoint holding a different lm_head: transformers 5
    keeps the head apart ("both are present with different values, so we will NOT tie them"); we dropped it for
    the embeddings, a silently different model. An export writing the tied copy equal still ties."""
    import transformers as tf
    _llava(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = True   # both flags (a 4.x save's)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ids, pixels = _ids_and_pixels()
    ours = ocellus.load(tmp_path)
    assert ours.language_model.lm_head.weight is not ours.language_model.embed_tokens.weight
    _same_logits(tf.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval(), ours, input_ids=ids,
                 pixel_values=pixels)
    tensors = load_file(tmp_path / "model.safetensors")
    key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors["language_model.lm_head.weight"] = tensors[key].clone()
    save_file(tensors, tmp_path / "model.safetensors")
    ours = ocellus.load(tmp_path)
    assert ours.language_model.lm_head.weight is ours.language_model.embed_tokens.weight


def test_internvl_untied_text_config_under_the_top_level_default(tmp_path):
    """InternVL's top-level tie_word_embeddings defaults to true; a config.json without it (a transformers 4 save)
    over text_config false and a checkpoint with its own lm_head (InternVL3-8B's kind): transformers 5 keeps the
    head apart; we tied it to the embeddings and dropped it."""
    import transformers as tf
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=4)
    tc = dict(model_type="qwen2", vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, eos_token_id=None)
    config = tf.InternVLConfig(vision_config=vc, text_config=tc, image_token_id=120, tie_word_embeddings=False)
    torch.manual_seed(0)
    ref = shift_biases_and_norms(spread_init(tf.InternVLForConditionalGeneration(config).eval()),
                                 also=("lambda", "cls_token", "position_embeddings"))
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ref = tf.InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[5, 6] + [120] * 4 + [7, 8]])
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = ocellus.load(tmp_path)
    _same_logits(ref, ours, input_ids=ids, pixel_values=pixels)
    ocellus.save(ours, tmp_path / "out")
    _same_logits(tf.InternVLForConditionalGeneration.from_pretrained(tmp_path / "out").eval(), ours, input_ids=ids,
                 pixel_values=pixels)


@pytest.mark.parametrize("mean", [None, [0.25, 0.5, 0.75]])
def test_llava_square_pad_without_a_mean_is_black(mean):
    """LlavaImageProcessor with do_pad, do_normalize false and image_mean null pads with black (its fill is
    int(mean * 255), no mean: 0); we padded with CLIP's mean. A given mean still fills, normalisation off."""
    import numpy as np
    from PIL import Image
    from transformers import LlavaImageProcessorPil
    from ocellus.data.image import ImageProcessorConfig, preprocess
    d = {"image_processor_type": "LlavaImageProcessor", "do_pad": True, "do_normalize": False, "image_mean": mean,
         "image_std": None, "do_resize": True, "size": {"shortest_edge": 24}, "do_center_crop": True,
         "crop_size": {"height": 24, "width": 24}}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 45, 3), dtype=np.uint8))
    want = LlavaImageProcessorPil(**{k: v for k, v in d.items() if k != "image_processor_type"})(
        image, return_tensors="pt").pixel_values
    got = preprocess([image], ImageProcessorConfig.from_dict(d), pad_to_square=True)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_onevision_saved_with_its_processor_reopens_in_both(tmp_path, monkeypatch):
    """ocellus.save of a LLaVA-OneVision model with its processor wrote no processor_config.json: transformers'
    LlavaOnevisionProcessor then counts with anyres_max_9 and no num_image_tokens. Now the saved dir reopens as
    the OneVision processor in Ocellus and, with its processor_config.json, counts as ours in transformers; a
    num_image_tokens that disagrees with the tower is a ConfigError."""
    import transformers as tf
    from ocellus.errors import ConfigError
    from ocellus.models.families.llava_onevision.processor import OnevisionProcessor
    from test_llava_onevision_parity import MAX, PINPOINTS, SIDE, TILE, _images, _reference
    from test_processor_parity import _tokenizer
    tok = _tokenizer(tmp_path)
    src, out = tmp_path / "src", tmp_path / "out"
    _reference(vocab=320, image_token=tok.convert_tokens_to_ids("<image>")).save_pretrained(src)
    tf.LlavaOnevisionImageProcessorPil(size={"height": TILE, "width": TILE},
                                       image_grid_pinpoints=PINPOINTS).save_pretrained(src)
    tok.save_pretrained(src)
    proc = ocellus.load_processor(src)
    ocellus.save(ocellus.load(src), out, processor=proc)
    again = ocellus.load_processor(out)
    assert isinstance(again, OnevisionProcessor) and again.max_patches == MAX
    written = json.loads((out / "processor_config.json").read_text())
    assert written["processor_class"] == "LlavaOnevisionProcessor"
    monkeypatch.setattr(tf.LlavaOnevisionProcessor, "check_argument_for_proper_class", lambda self, name, arg: None)
    hf = tf.LlavaOnevisionProcessor(image_processor=tf.LlavaOnevisionImageProcessorPil.from_pretrained(out),
                                    tokenizer=tf.AutoTokenizer.from_pretrained(out),
                                    **{k: v for k, v in written.items() if k != "processor_class"})
    text = ["<image>\nWhat is in the picture?", "Describe <image> the image.", "<image> red", "A <image>"]
    images = _images()[:4]
    want = hf(images=images, text=text, return_tensors="pt", padding=True, padding_side="left")
    got = again(text=text, images=images)
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    torch.testing.assert_close(got["pixel_values"], want["pixel_values"], atol=0, rtol=0)
    (out / "processor_config.json").write_text(json.dumps({**written, "num_image_tokens": SIDE * SIDE + 1}))
    with pytest.raises(ConfigError, match="num_image_tokens 17"):
        ocellus.load_processor(out)


@pytest.mark.parametrize("width, mlp_width", [(56, 61), (88, 60), (1280, 3420), (48, 192)])
def test_qwen2_vl_mlp_width_survives_its_ratio(width, mlp_width):
    """Qwen2-VL writes its MLP width as mlp_ratio, read back as int(embed_dim * mlp_ratio) (transformers'
    VisionMlp). The plain quotient reads back one short for some widths (61 / 56 * 56 = 60.99...), so a saved
    tower did not reopen (a shape mismatch); an integer ratio stays an int (transformers 5 types it so)."""
    from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig
    ours = Qwen2VisionConfig(variant="qwen2_vl", depth=1, hidden_size=width, num_heads=2, intermediate_size=mlp_width)
    written = ours.to_hf()
    assert int(written["embed_dim"] * written["mlp_ratio"]) == mlp_width
    assert Qwen2VisionConfig.from_hf(json.loads(json.dumps(written)), "qwen2_vl") == ours
    assert isinstance(written["mlp_ratio"], int) == (mlp_width % width == 0)


def test_qwen2_vl_vision_heads_and_depth_under_their_other_names(tmp_path):
    """transformers' Qwen2-VL vision config reads num_attention_heads / num_hidden_layers as num_heads / depth
    (its attribute_map); we read the defaults (16 heads, 32 blocks) instead. Both spellings at once must agree."""
    import transformers as tf
    from ocellus.errors import ConfigError
    from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig
    tc = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                      "rope_theta": 10000.0}, eos_token_id=None, bos_token_id=None)
    cfg = tf.Qwen2VLConfig(text_config=tc, vision_config=dict(depth=2, embed_dim=64, hidden_size=32, num_heads=2,
                                                               mlp_ratio=2), image_token_id=120, vision_start_token_id=122,
                           vision_end_token_id=123)
    torch.manual_seed(0)
    ref = shift_biases_and_norms(spread_init(tf.Qwen2VLForConditionalGeneration(cfg).eval()), also=("ln_q",))
    ref.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    vision = written["vision_config"]
    vision["num_attention_heads"], vision["num_hidden_layers"] = vision.pop("num_heads"), vision.pop("depth")
    (tmp_path / "config.json").write_text(json.dumps(written))
    ref = tf.Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    _assert_qwen2_vl_image_logits(ref, tmp_path, (1, 4, 6))
    with pytest.raises(ConfigError, match="num_heads=2 and num_attention_heads=4"):
        Qwen2VisionConfig.from_hf({"num_heads": 2, "num_attention_heads": 4}, "qwen2_vl")


def test_onevision_image_token_id_spelling_is_not_overridden_by_the_default(tmp_path):
    """LlavaOnevisionConfig reads image_token_id as image_token_index; our OneVision defaults filled
    image_token_index=151646 over it, so the model looked for another placeholder. Two different values is a
    ConfigError."""
    from ocellus.errors import ConfigError
    from test_llava_onevision_parity import _reference
    _reference().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["image_token_id"] = cfg.pop("image_token_index")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert ocellus.load(tmp_path).image_token_id == IMG
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "image_token_index": IMG + 1}))
    with pytest.raises(ConfigError, match="image_token_index 101 and image_token_id 100"):
        ocellus.load(tmp_path)


@pytest.mark.parametrize("layer", [True, 3, -4])
def test_internvl_vision_feature_layer_outside_the_tower_is_a_config_error(layer):
    """InternVL read vision_feature_layer True as layer 1 and an index past the tower's 3 hidden states failed at
    the first image; a ConfigError naming the field at load, as LLaVA's."""
    from ocellus.errors import ConfigError
    from ocellus.models.families.internvl.modeling import build_internvl
    cfg = {"vision_config": dict(model_type="internvl_vision", hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4),
           "text_config": dict(model_type="qwen2", vocab_size=128, hidden_size=48, intermediate_size=96,
                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2),
           "image_token_id": 120}
    build_internvl({**cfg, "vision_feature_layer": -3})
    with pytest.raises(ConfigError, match="vision_feature_layer must be an int or a non-empty list of ints in -3..2"):
        build_internvl({**cfg, "vision_feature_layer": layer})


def test_internvl_full_features_with_a_cls_token_is_a_config_error():
    """'full' keeps InternViT's CLS token: 1 + P features fold into no square grid. transformers fails in its
    forward; we failed at the first image with an InputError about patches, not naming the field."""
    from ocellus.errors import ConfigError
    from ocellus.models.families.internvl.modeling import build_internvl
    cfg = {"vision_config": dict(model_type="internvl_vision", hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=4),
           "text_config": dict(model_type="qwen2", vocab_size=128, hidden_size=48, intermediate_size=96,
                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2),
           "image_token_id": 120}
    build_internvl(cfg)
    with pytest.raises(ConfigError, match="vision_feature_select_strategy 'full'"):
        build_internvl({**cfg, "vision_feature_select_strategy": "full"})


def test_blip2_text_model_defaults_to_opt_and_is_named():
    """Blip2Config builds an OPT text model when text_config names no model_type; we built a Llama (and the
    error for an OPT text_config named LLaVA). image_token_id is image_token_index's other name: two values are
    a ConfigError. An encoder-decoder LM is refused by its flag first."""
    from ocellus.errors import ConfigError
    from ocellus.models.families.blip2.modeling import build_blip2
    cfg = {"vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
           "qformer_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "intermediate_size": 64},
           "text_config": {"vocab_size": 100, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
                           "num_attention_heads": 4},
           "num_query_tokens": 4, "image_token_index": 99}
    with pytest.raises(ConfigError, match="BLIP-2 text_config.model_type 'opt' is not a supported decoder"):
        build_blip2(cfg)
    build_blip2({**cfg, "text_config": {**cfg["text_config"], "model_type": "llama"}})
    with pytest.raises(ConfigError, match="BLIP-2 config.json has image_token_index 99 and image_token_id 98"):
        build_blip2({**cfg, "text_config": {**cfg["text_config"], "model_type": "llama"}, "image_token_id": 98})
    with pytest.raises(ConfigError, match="encoder-decoder LM"):
        build_blip2({**cfg, "text_config": {"model_type": "t5"}, "use_decoder_only_language_model": False})


def test_a_llava_vision_config_without_model_type_is_clip(tmp_path):
    """LlavaConfig (and LlavaNextConfig) read a vision_config that names no model_type as CLIP's; we refused it
    (and the processor's count already read it as CLIP)."""
    import transformers as tf
    ref = _llava(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["vision_config"]["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert isinstance(tf.AutoConfig.from_pretrained(tmp_path).vision_config, tf.CLIPVisionConfig)
    ids, pixels = _ids_and_pixels()
    _same_logits(ref, ocellus.load(tmp_path), input_ids=ids, pixel_values=pixels)


@pytest.mark.parametrize("layer", [2.0, True, -5, 4, [], [-1, 7], "x"])
def test_a_vision_feature_layer_the_tower_has_not_is_a_config_error(layer, tmp_path):
    """A vision_feature_layer that is no layer of the 3-block tower (4 hidden states), or no int: a ConfigError
    naming the field at load. We raised a TypeError (2.0), read True as layer 1, or failed at the first image."""
    from ocellus.errors import ConfigError
    _llava(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "vision_feature_layer": layer}))
    with pytest.raises(ConfigError, match="vision_feature_layer must be an int or a non-empty list of ints in -4..3"):
        ocellus.load(tmp_path)


def test_qwen2_5_vl_default_full_attention_blocks_past_a_short_tower(tmp_path):
    """transformers saves Qwen2.5-VL's default fullatt_block_indexes [7, 15, 23, 31] for a tower of any depth; a
    block number past the last block attends nowhere there. We refused such a checkpoint (a 3-block tower:
    every block windowed). A negative number is still refused: it is no block."""
    import transformers as tf
    from ocellus.errors import ConfigError
    from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig
    tc = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                      "rope_theta": 10000.0}, eos_token_id=None, bos_token_id=None)
    vc = dict(depth=3, hidden_size=32, out_hidden_size=32, intermediate_size=48, num_heads=2, window_size=56)
    cfg = tf.Qwen2_5_VLConfig(text_config=tc, vision_config=vc, image_token_id=120, vision_start_token_id=122,
                              vision_end_token_id=123)
    torch.manual_seed(0)
    ref = shift_biases_and_norms(spread_init(tf.Qwen2_5_VLForConditionalGeneration(cfg).eval()), also=("ln_q",))
    ref.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vision_config"]["fullatt_block_indexes"] == [7, 15, 23, 31]
    _assert_qwen2_vl_image_logits(ref, tmp_path, (1, 8, 12))   # 2 x 3 windows of 4 x 4 patches: windowing matters
    with pytest.raises(ConfigError, match=r"fullatt_block_indexes \[-1\] are not block numbers"):
        Qwen2VisionConfig(variant="qwen2_5_vl", depth=3, hidden_size=32, num_heads=2, fullatt_block_indexes=(1, -1))
