"""M-RoPE (nn/mrope.py): the positions Qwen2-VL's paper states, equality with transformers'
get_rope_index / rotary recomposition, and the decoder's [3, B, T] path."""
import pytest
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.nn.mrope import check_mrope_section, mrope_cos_sin, rope_index, vision_position_ids
from ocellus.nn.rope import RopeConfig, RotaryEmbedding

I, V = 50, 51


def test_image_ids_follow_the_grid_and_text_continues_at_max_plus_one():
    ids = torch.tensor([[1, 2] + [I] * 6 + [3, 4]])             # a 1 x (4 x 6) grid -> 2 x 3 merged tokens
    pos, delta = rope_index(ids, image_token_id=I, image_grid_thw=torch.tensor([[1, 4, 6]]))
    t, h, w = pos[:, 0].tolist()
    assert t == [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]                  # image: one temporal id = its start
    assert h == [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]                  # rows
    assert w == [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]                  # columns; text resumes at max (4) + 1
    assert delta.tolist() == [[7 - 10]]                          # max id 6, + 1, minus 10 tokens


def test_video_time_ids_plain_and_absolute():
    grid = torch.tensor([[3, 2, 2]])                             # 3 temporal patches of 1 x 1 merged tokens
    ids = torch.tensor([[9] + [V] * 3 + [9]])
    pos, _ = rope_index(ids, image_token_id=I, video_token_id=V, video_grid_thw=grid)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 4]                 # Qwen2-VL: one id per temporal patch
    pos, _ = rope_index(ids, image_token_id=I, video_token_id=V, video_grid_thw=grid,
                        second_per_grid_ts=torch.tensor([2.0]), tokens_per_second=1.5)
    assert pos[0, 0].tolist() == [0, 1, 4, 7, 8]                 # Qwen2.5-VL: 3 ids per 2 s patch; text at max + 1
    assert pos[1, 0].tolist() == [0, 1, 1, 1, 8]


def test_padding_is_skipped_and_adjacent_images_are_split_by_their_grids():
    grids = torch.tensor([[1, 2, 2], [1, 2, 4]])                # 1 token, then 2 tokens, no text between
    ids = torch.tensor([[0, 0, 7, I, I, I, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    pos, delta = rope_index(ids, image_token_id=I, image_grid_thw=grids, attention_mask=mask)
    assert pos[2, 0].tolist() == [0, 0, 0, 1, 2, 3, 4]
    assert pos[0, 0].tolist() == [0, 0, 0, 1, 2, 2, 4]
    assert delta.tolist() == [[4 + 1 - 5]]


def test_placeholder_and_grid_mismatches_raise():
    ids = torch.tensor([[1] + [I] * 4 + [2]])
    with pytest.raises(InputError, match="more image placeholder tokens"):
        rope_index(ids, image_token_id=I, image_grid_thw=torch.tensor([[1, 2, 2]]))
    with pytest.raises(InputError, match="ends inside"):
        rope_index(ids, image_token_id=I, image_grid_thw=torch.tensor([[1, 4, 6]]))
    with pytest.raises(InputError, match="without placeholder tokens"):
        rope_index(ids, image_token_id=I, image_grid_thw=torch.tensor([[1, 4, 4], [1, 2, 2]]))
    with pytest.raises(InputError, match="second_per_grid_ts"):
        rope_index(ids, image_token_id=I, video_token_id=V, video_grid_thw=torch.tensor([[2, 2, 2]]),
                   second_per_grid_ts=[1.0, 2.0])


def test_rope_index_equals_transformers_get_rope_index():
    """Random rows with images and videos (temporal extent below the grid side, where transformers
    5.23's text rule and max + 1 agree), left padding, Qwen2-VL and Qwen2.5-VL."""
    import transformers as tf
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    g = torch.Generator().manual_seed(0)
    cfg = tf.Qwen2_5_VLConfig(image_token_id=I, video_token_id=V, vision_config={"tokens_per_second": 2})
    ref = Qwen2_5_VLModel.__new__(Qwen2_5_VLModel)
    object.__setattr__(ref, "config", cfg)  # get_rope_index reads only the config
    for trial in range(6):
        rows, grids, vgrids, seconds = [], [], [], []
        for _ in range(2):
            row = torch.randint(0, 40, (3,), generator=g).tolist()
            for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
                h, w = (2 * int(torch.randint(1, 4, (1,), generator=g)) for _ in range(2))
                if torch.rand(1, generator=g) < 0.5:
                    grids.append([1, h, w])
                    row += [I] * (h * w // 4)
                else:
                    t = int(torch.randint(1, 3, (1,), generator=g))
                    vgrids.append([t, 2 * h, 2 * w])
                    seconds.append(0.5 * int(torch.randint(1, 3, (1,), generator=g)))
                    row += [V] * (t * h * w)
                row += torch.randint(0, 40, (2,), generator=g).tolist()
            rows.append(row)
        width = max(map(len, rows))
        ids = torch.zeros(2, width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, width - len(r):], mask[b, width - len(r):] = torch.tensor(r), 1
        kw = dict(image_grid_thw=torch.tensor(grids) if grids else None,
                  video_grid_thw=torch.tensor(vgrids) if vgrids else None, attention_mask=mask)
        types = (ids == I).long() + 2 * (ids == V).long()
        secs = torch.tensor(seconds) if seconds else None
        want, want_delta = ref.get_rope_index(ids, types, second_per_grid_ts=secs, **kw)
        got, got_delta = rope_index(ids, image_token_id=I, video_token_id=V, second_per_grid_ts=secs,
                                    tokens_per_second=2, merge_size=2, **kw)
        assert torch.equal(got[:, mask.bool()], want[:, mask.bool()]), trial
        assert torch.equal(got_delta, want_delta), trial


def test_cos_sin_recomposition_equals_transformers():
    import transformers as tf
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding
    section = [2, 3, 3]
    cfg = tf.Qwen2VLTextConfig(hidden_size=64, num_attention_heads=4,
                               rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": section})
    pos = torch.randint(0, 50, (3, 2, 7))
    want = Qwen2VLRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float32), pos)
    got = mrope_cos_sin(*RotaryEmbedding(RopeConfig(head_dim=16))(pos), section)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_text_only_mrope_equals_1d_rope_and_bands_follow_their_axis():
    rope = RotaryEmbedding(RopeConfig(head_dim=16))
    pos = torch.arange(9)[None]
    c3, s3 = mrope_cos_sin(*rope(pos.expand(3, 1, 9)), (2, 3, 3))
    c1, s1 = rope(pos)
    assert torch.equal(c3, c1) and torch.equal(s3, s1)
    ids = torch.stack([torch.zeros(1, 9, dtype=torch.long), pos, torch.zeros(1, 9, dtype=torch.long)])
    cos, _ = mrope_cos_sin(*rope(ids), (2, 3, 3))                 # only the height band (pairs 2..4) moves
    moving = (cos[0] != 1).any(0)
    assert moving.tolist() == [False, False, True, True, True, False, False, False] * 2


def test_vision_position_ids_and_section_checks():
    assert vision_position_ids(10, (2, 2, 4), 2, time_interval=3.0).tolist() == [
        [10, 10, 13, 13], [10, 10, 10, 10], [10, 11, 10, 11]]
    with pytest.raises(ConfigError, match="mrope_section"):
        check_mrope_section([2, 2, 2], 16)
    assert check_mrope_section([2, 3, 3], 16) == (2, 3, 3)


def test_decoder_takes_3d_position_ids_only_with_a_section():
    from ocellus.models.text.decoder import DecoderConfig, DecoderLM
    base = dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                model_type="qwen2")
    torch.manual_seed(0)
    plain = DecoderLM(DecoderConfig.from_hf(base)).eval()
    mrope = DecoderLM(DecoderConfig.from_hf({**base, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}))
    mrope.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 32, (1, 6))
    pos = torch.arange(6)[None]
    with torch.no_grad():
        same = mrope(ids, position_ids=pos.expand(3, 1, 6)).logits
        assert torch.equal(same, plain(ids).logits)                # text ids on all axes = 1D RoPE
        moved = mrope(ids, position_ids=torch.stack([pos, pos * 0, pos])).logits
        assert not torch.allclose(moved, same)
    with pytest.raises(InputError, match="mrope_section"):
        plain(ids, position_ids=pos.expand(3, 1, 6))
    assert mrope.config.to_hf()["rope_parameters"]["mrope_section"] == [2, 3, 3]
