"""Qwen2-VL paths the main parity file (test_qwen2_vl_parity.py) does not reach, each against transformers:
a config.json without mrope_section (transformers' default [16, 24, 24]), a decode step called with a cache
but no position_ids (the cache's length and rope delta place it), the vision configs' defaults (and a
fractional mlp_ratio round-tripping), M-RoPE time ids of a Qwen2.5-VL video (1 s per temporal patch when
second_per_grid_ts is left out; a fractional interval truncated), transformers 5's mm_token_type_ids
accepted for a video, a decode step whose token is the image pad (generation may emit it), text-only
inputs_embeds (plain positions), and the refusals of beam search and of a grid width the merge does not divide."""
import json

import pytest
import torch

import ocellus
from ocellus.errors import ConfigError, InputError
from _init import shift_biases_and_norms, spread_init
from ocellus.models.vision.qwen2_vit import Qwen2VisionConfig
from ocellus.nn.mrope import check_mm_token_type_ids, rope_index
from test_qwen2_vl_parity import CASES, IMG, VE, VID, VS, _compare, _ids, _load_both, _patches, _types


def test_config_without_mrope_section_takes_transformers_default(tmp_path):
    """A head of 128 (64 rotary pairs, the default section's sum); a low rope_theta so that every band's
    angle moves with its axis' id."""
    import transformers as tf
    tc = dict(vocab_size=128, hidden_size=128, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
              num_key_value_heads=1, max_position_embeddings=512, eos_token_id=None, bos_token_id=None,
              pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 50.0})
    vc = dict(depth=1, embed_dim=32, hidden_size=128, num_heads=2, mlp_ratio=2)
    cfg = tf.Qwen2VLConfig(text_config=tc, vision_config=vc, image_token_id=IMG, video_token_id=VID,
                           vision_start_token_id=VS, vision_end_token_id=VE)
    torch.manual_seed(0)
    ref = shift_biases_and_norms(spread_init(tf.AutoModelForImageTextToText.from_config(cfg).eval()), also=("ln_q",))
    ref.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling"):   # whatever transformers wrote: no section anywhere
        for where in (saved, saved.get("text_config") or {}):
            if isinstance(where.get(key), dict):
                where[key].pop("mrope_section", None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    ours = ocellus.load(tmp_path)
    grids = torch.tensor([[1, 8, 12]])     # 4 x 6 merged: the height and width ids run apart from the temporal one
    ids = torch.tensor([_ids([5, 6], ("image", 24), [7, 8, 9])])
    _compare(ref, ours, input_ids=ids, pixel_values=_patches(grids), image_grid_thw=grids)


def test_decode_steps_without_position_ids_continue_after_the_image(tmp_path):
    """Prefill with a cache, then two one-token steps that pass no position_ids: each step's logits equal
    transformers' full forward at that position (the image's 2 x 3 merged grid makes the rope delta -3)."""
    ref, ours = _load_both(CASES[0], tmp_path)
    grids = torch.tensor([[1, 4, 6]])
    ids = torch.tensor([_ids([5], ("image", 6), [7, 8, 9, 10])])
    T = ids.shape[1]
    pixels = _patches(grids)
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=pixels, image_grid_thw=grids, mm_token_type_ids=_types(ids)).logits
        cache = ours.new_cache(1, T)
        ours(input_ids=ids[:, :T - 2], pixel_values=pixels, image_grid_thw=grids, cache=cache)
        assert cache.rope_deltas.tolist() == [[-3]]
        for t in (T - 2, T - 1):
            got = ours(input_ids=ids[:, t:t + 1], cache=cache).logits[:, -1]
            torch.testing.assert_close(got, want[:, t], atol=1e-4, rtol=1e-4)


def test_vision_config_defaults_are_transformers():
    """Fields a vision_config leaves out take transformers' Qwen2VLVisionConfig / Qwen2_5_VLVisionConfig defaults."""
    import transformers as tf
    ref = tf.Qwen2VLConfig().vision_config
    ours = Qwen2VisionConfig.from_hf({}, "qwen2_vl")
    assert (ours.depth, ours.hidden_size, ours.num_heads, ours.hidden_act, ours.out_hidden_size) == (
        ref.depth, ref.embed_dim, ref.num_heads, ref.hidden_act, ref.hidden_size)
    assert ours.intermediate_size == int(ref.embed_dim * ref.mlp_ratio)        # transformers' VisionMlp width
    assert (ours.patch_size, ours.temporal_patch_size, ours.spatial_merge_size, ours.in_channels) == (
        ref.patch_size, ref.temporal_patch_size, ref.spatial_merge_size, ref.in_channels)
    ref = tf.Qwen2_5_VLConfig().vision_config
    ours = Qwen2VisionConfig.from_hf({}, "qwen2_5_vl")
    assert (ours.depth, ours.hidden_size, ours.num_heads, ours.intermediate_size, ours.hidden_act,
            ours.out_hidden_size, ours.window_size, ours.tokens_per_second) == (
        ref.depth, ref.hidden_size, ref.num_heads, ref.intermediate_size, ref.hidden_act, ref.out_hidden_size,
        ref.window_size, ref.tokens_per_second)
    assert list(ours.fullatt_block_indexes) == list(ref.fullatt_block_indexes)


def test_fractional_mlp_ratio_round_trips():
    """A Qwen2-VL tower whose MLP is 2.5x its width writes mlp_ratio 2.5 and reads back the same tower
    (transformers 5 types mlp_ratio as an int, so such a tower stays Ocellus'; a truncated 2 would shrink it)."""
    ours = Qwen2VisionConfig.from_hf({"embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.5, "depth": 1}, "qwen2_vl")
    assert ours.intermediate_size == 80
    written = ours.to_hf()
    assert written["mlp_ratio"] == 2.5 and Qwen2VisionConfig.from_hf(written, "qwen2_vl") == ours


def test_video_time_ids_equal_transformers_get_rope_index():
    """Qwen2.5-VL with tokens_per_second 2: without second_per_grid_ts transformers takes 1 s per temporal
    patch (ids 2 apart); with 0.75 s the interval 1.5 is truncated (ids 0, 1, 3 after the start)."""
    import transformers as tf
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    cfg = tf.Qwen2_5_VLConfig(image_token_id=IMG, video_token_id=VID, vision_config={"tokens_per_second": 2})
    ref = Qwen2_5_VLModel.__new__(Qwen2_5_VLModel)
    object.__setattr__(ref, "config", cfg)  # get_rope_index reads only the config
    video = torch.tensor([[3, 8, 8]])      # 3 temporal patches of 4 x 4 merged tokens
    ids = torch.tensor([[5, 6] + [VID] * 48 + [7, 8]])
    for seconds, frames in ((None, [2, 4, 6]), (torch.tensor([0.75]), [2, 3, 5])):
        want, _ = ref.get_rope_index(ids, _types(ids), video_grid_thw=video, second_per_grid_ts=seconds)
        got, _ = rope_index(ids, image_token_id=IMG, video_token_id=VID, video_grid_thw=video,
                            second_per_grid_ts=seconds, tokens_per_second=2, merge_size=2)
        assert torch.equal(got[:, :, :50], want[:, :, :50])               # the text before and the video's ids
        assert got[0, 0, 2:50].unique().tolist() == frames


def test_mm_token_type_ids_of_a_video_are_accepted(tmp_path):
    """transformers 5's modality mask (2 at video pads) passed to the model is checked, not refused."""
    _, ours = _load_both(CASES[0], tmp_path)
    video = torch.tensor([[2, 4, 4]])
    ids = torch.tensor([_ids([5], ("video", 8), [7])])
    check_mm_token_type_ids(_types(ids), ids, IMG, VID)
    with torch.no_grad():
        plain = ours(input_ids=ids, pixel_values_videos=_patches(video), video_grid_thw=video).logits
        typed = ours(input_ids=ids, pixel_values_videos=_patches(video), video_grid_thw=video,
                     mm_token_type_ids=_types(ids)).logits
    assert torch.equal(plain, typed)


def test_decode_step_whose_token_is_the_image_pad_equals_transformers(tmp_path):
    """A generated <|image_pad|> brings no pixels: the step runs at plain position + delta, as transformers'
    cached forward does."""
    ref, ours = _load_both(CASES[0], tmp_path)
    grids = torch.tensor([[1, 4, 6]])
    ids = torch.tensor([_ids([5], ("image", 6), [7, 8, 9])])
    T, pixels, step = ids.shape[1], _patches(grids), torch.tensor([[IMG]])
    with torch.no_grad():
        out = ref(input_ids=ids, pixel_values=pixels, image_grid_thw=grids, mm_token_type_ids=_types(ids),
                  use_cache=True)
        want = ref(input_ids=step, past_key_values=out.past_key_values, mm_token_type_ids=_types(step),
                   cache_position=torch.tensor([T])).logits[:, -1]
        cache = ours.new_cache(1, T + 1)
        ours(input_ids=ids, pixel_values=pixels, image_grid_thw=grids, cache=cache)
        got = ours(input_ids=step, cache=cache, position_ids=torch.tensor([[T]])).logits[:, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_text_only_inputs_embeds_equal_transformers(tmp_path):
    """Without input_ids nothing says where media are: the positions are the plain 0..T-1 on all three axes,
    so a decode step after an embeddings prefill (at cache.length) continues them."""
    ref, ours = _load_both(CASES[0], tmp_path)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    T = ids.shape[1]
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        embeds = ours.language_model.embed_tokens(ids)
        torch.testing.assert_close(ours(inputs_embeds=embeds).logits, want, atol=1e-4, rtol=1e-4)
        cache = ours.new_cache(1, T)
        ours(inputs_embeds=embeds[:, :T - 1], cache=cache)
        got = ours(input_ids=ids[:, T - 1:], cache=cache).logits[:, -1]
    torch.testing.assert_close(got, want[:, -1], atol=1e-4, rtol=1e-4)


def test_beam_search_and_a_grid_width_the_merge_does_not_divide_are_refused(tmp_path):
    _, ours = _load_both(CASES[0], tmp_path)
    grids = torch.tensor([[1, 4, 4]])
    ids = torch.tensor([_ids([5], ("image", 4), [6])])
    with pytest.raises(ConfigError, match="beam search"):
        ours.generate(input_ids=ids, pixel_values=_patches(grids), image_grid_thw=grids, num_beams=2,
                      max_new_tokens=2)
    odd = torch.tensor([[1, 4, 3]])
    with pytest.raises(InputError, match="divisible by the merge size"):
        ours(input_ids=torch.tensor([_ids([5], ("image", 3), [6])]), pixel_values=_patches(odd), image_grid_thw=odd)
